"""The `dreamfusion` command: every command is a dataclass parsed by tyro.

    dreamfusion generate PROMPT [--out DIR] [--preset NAME] [--seed N] [--steps N] [--device cpu|cuda]
                                [--model ID_OR_DIR] [--resume] [--quiet] [--no-mesh] [--no-video]
                                [--view] [--port N] [--section.field VALUE ...]
                                [bundled|stable-diffusion|deepfloyd-if|closed-form]
                                [--guidance.field VALUE ...]
    dreamfusion presets
    dreamfusion config [--preset NAME] [--section.field VALUE ...]
    dreamfusion export RUN [--out PATH] [--format glb|obj|ply] [--resolution 256] ...
    dreamfusion render RUN [--video out.mp4|out.gif] [--mode color|albedo|textureless|normal|depth] ...
    dreamfusion view RUN [--port 8080] [--host 127.0.0.1] ...

export, render and view take --device auto (cuda when there is one, else cpu).
    dreamfusion prior train --out DIR [--preset tiny|bundled|bundled-camera-text] ...
    dreamfusion prior sample PROMPT [-n 16] [--out grid.png] ...
    dreamfusion bench fidelity [--out DIR] [--preset NAME] [--only OBJECT ...] [--seeds N ...] ...
    dreamfusion bench merge DIR DIR ... --out DIR
    dreamfusion batch PROMPTS --out DIR [--seeds N ...] [--address auto|HOST:PORT] [--gpus-per-run F] ...

A command is a dataclass whose fields are its flags (their docstrings are the help) and whose
`run(argv, default)` does the work; a command taking the whole Config gives a classmethod
`defaults(argv) -> (instance, argv)` so the preset named on the command line sets the defaults.
A group (prior, bench) is a dict of name -> command. Adding a command is one class and one entry
in COMMANDS. Commands load lazily: `dreamfusion --help` imports neither torch nor the commands.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import logging
import sys
from typing import Any, NamedTuple

from dreamfusion.errors import UserError


class Command(NamedTuple):
    """Where a command's class (or a group's dict of them) lives, and its line in `dreamfusion --help`."""

    target: str  # "module:attribute"
    help: str

    def load(self) -> Any:
        module, attribute = self.target.split(":")
        return getattr(importlib.import_module(module), attribute)


COMMANDS: dict[str, Command] = {
    "generate": Command("dreamfusion.commands:Generate", "Turn a sentence into a 3D field."),
    "presets": Command("dreamfusion.commands:Presets", "List the presets."),
    "config": Command("dreamfusion.commands:ShowConfig", "Print a preset's resolved config as JSON."),
    "export": Command("dreamfusion.commands:Export", "Extract a textured mesh from a run."),
    "render": Command("dreamfusion.commands:Render", "Render a turntable video of a run."),
    "view": Command("dreamfusion.commands:View", "Serve a web viewer of a run."),
    "prior": Command(
        "dreamfusion.prior_training.cli:COMMANDS", "Train or sample the bundled text-to-image prior."
    ),
    "batch": Command(
        "dreamfusion.batch.cli:Batch",
        "Train many prompts at once, on every GPU of a machine or a Ray cluster.",
    ),
    "bench": Command("dreamfusion.bench.cli:COMMANDS", "Benchmarks against the world's ground truth."),
}

DESCRIPTION = (
    "Text-to-3D with score distillation sampling. `dreamfusion COMMAND --help` lists a command's "
    "flags; `dreamfusion --version` prints the version."
)


def _listing(entries: dict[str, Any], prog: str, argv: list[str], description: str | None) -> None:
    """No command, or one we lack: tyro prints the list (for --help) or a usage error (exit 2)."""
    import tyro

    stubs = {}
    for name, entry in entries.items():
        text = entry.help if isinstance(entry, Command) else (entry.__doc__ or "").strip().split("\n\n")[0]
        stubs[name] = dataclasses.make_dataclass(name.title().replace("-", ""), [])
        stubs[name].__doc__ = text
    tyro.extras.subcommand_cli_from_dict(stubs, args=argv, prog=prog, description=description)
    raise UserError(f"choose a command: {', '.join(entries)}")


def _dispatch(entries: dict[str, Any], argv: list[str], prog: str, description: str | None = None) -> int:
    if not argv or argv[0] not in entries:
        _listing(entries, prog, argv, description)
    name, rest = argv[0], argv[1:]
    entry = entries[name]
    target = entry.load() if isinstance(entry, Command) else entry
    if isinstance(target, dict):
        return _dispatch(target, rest, f"{prog} {name}")
    return run_command(target, rest, f"{prog} {name}")


def run_command(cls: type, argv: list[str], prog: str) -> int:
    """Parse `argv` into the command dataclass `cls` with tyro and run it."""
    import tyro

    default = None
    if hasattr(cls, "defaults"):
        default, argv = cls.defaults(argv)
    parsed = tyro.cli(cls, default=default, args=argv, prog=prog, config=(tyro.conf.CascadeSubcommandArgs,))
    return parsed.run(argv, default) or 0


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        from dreamfusion import __version__

        print(f"dreamfusion {__version__}")
        return 0
    try:
        return _dispatch(COMMANDS, argv, "dreamfusion", DESCRIPTION)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # The disk refused a write (full, read-only, not ours): every file is written atomically, so
        # what was there before is intact; anything else is a bug and keeps its traceback.
        if e.errno not in DISK_ERRORS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: cannot write{where}: {e.strerror}; files written before are intact", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
