"""The `dreamfusion` command.

    dreamfusion generate PROMPT [--out DIR] [--preset NAME] [--seed N] [--steps N]
                                [--guidance NAME] [--device cpu|cuda] [--resume] [--section.field VALUE ...]
    dreamfusion presets
    dreamfusion config [--preset NAME] [--section.field VALUE ...]

The common flags are plain argparse; every other config field (`--optim.lr 1e-3`,
`--camera.resolution 96`, ...) is parsed by tyro against the chosen preset, whose dataclass
docstrings become the help (`dreamfusion config --preset cpu --help`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dreamfusion.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamfusion", description="Text-to-3D with score distillation sampling.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="turn a sentence into a 3D field",
        description="Turn a sentence into a 3D field. Any config field can be set too, e.g. --optim.lr 1e-3; "
        "list them with `dreamfusion config --preset NAME --help`.",
    )
    gen.add_argument("prompt", help="what to make, e.g. \"a ceramic mug\"")
    gen.add_argument("--out", type=Path, default=None, help="run folder (default: outputs/<prompt>)")
    gen.add_argument("--preset", default="default", help="smoke | cpu | default | paper (default: default)")
    gen.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    gen.add_argument("--steps", type=int, default=None, help="optimization steps (default: the preset's)")
    gen.add_argument("--guidance", default=None, help="guidance backend (default: the preset's)")
    gen.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    gen.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("presets", help="list the presets")

    conf = sub.add_parser("config", help="print a preset's resolved config as JSON", add_help=False)
    conf.add_argument("--preset", default="default")
    return parser


def _apply_overrides(cfg, extra: list[str], prog: str):
    """Parse `--section.field VALUE` flags with tyro against `cfg` as the defaults."""
    if not extra:
        return cfg
    if not extra[0].startswith("-"):
        raise UserError(f"unexpected argument '{extra[0]}'; put a prompt with spaces in quotes")
    import tyro

    from dreamfusion.config import Config

    return tyro.cli(Config, default=cfg, args=extra, prog=prog)


def _generate(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.api import generate, resolve_config

    cfg = resolve_config(args.preset, args.steps, args.seed, args.guidance, args.device)
    cfg = _apply_overrides(cfg, extra, "dreamfusion generate PROMPT")
    result = generate(args.prompt, out=args.out, resume=args.resume, config=cfg, progress=not args.quiet)
    print(f"run folder:  {result.run_dir}")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"preview:     {result.preview}")
    print(f"metrics:     {result.metrics}")
    if result.skipped_steps:
        print(f"warning: {result.skipped_steps} steps had non-finite gradients and were skipped")
    return 0


def _config(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.api import resolve_config
    from dreamfusion.config import to_dict

    cfg = resolve_config(args.preset)
    cfg = _apply_overrides(cfg, extra, f"dreamfusion config --preset {args.preset}")
    print(json.dumps(to_dict(cfg), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args, extra = _parser().parse_known_args(argv)
    try:
        if args.command == "presets":
            from dreamfusion.presets import PRESETS

            for name, fn in PRESETS.items():
                print(f"{name:8s} {(fn.__doc__ or '').strip().splitlines()[0]}")
            return 0
        if args.command == "config":
            return _config(args, extra)
        return _generate(args, extra)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
