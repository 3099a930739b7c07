"""The `dreamfusion` command.

    dreamfusion generate PROMPT [--out DIR] [--preset NAME] [--seed N] [--steps N]
                                [--guidance NAME] [--model ID_OR_DIR] [--device cpu|cuda] [--resume]
                                [--section.field VALUE ...]
                                [--no-mesh] [--no-video] [--view] [--port N]
    dreamfusion presets
    dreamfusion config [--preset NAME] [--section.field VALUE ...]
    dreamfusion export RUN [--out PATH] [--format glb|obj|ply] [--resolution 256] [--texture-size 1024]
                           [--level auto|FLOAT] [--faces 50000]
    dreamfusion render RUN [--video out.mp4|out.gif] [--mode color|albedo|textureless|normal|depth]
                           [--frames 120] [--elevation 15] [--size 256] [--light camera:30,30|world:AZ,EL]
    dreamfusion view RUN [--port 8080] [--host 127.0.0.1]
    dreamfusion prior train --out DIR [--preset tiny|bundled|bundled-camera-text] [--steps N]
                            [--device cuda] [--init FILE] [--timesteps LO HI] [--resume] [--max-minutes M]
                            (all flags: dreamfusion prior train --help)
    dreamfusion prior sample PROMPT [-n 16] [--out grid.png] [--model PATH] [--steps 50] [--guidance-scale S]
    dreamfusion bench fidelity [--out DIR] [--preset NAME] [--only OBJECT ...] [--seeds N ...] [--limit N]
                               [--steps N] [--checkpoint-every N] [--guidance NAME] [--device cpu|cuda]
    dreamfusion bench merge DIR DIR ... --out DIR

The common flags are plain argparse; every other config field (`--optim.lr 1e-3`,
`--camera.resolution 96`, ...) is parsed by tyro against the chosen preset, whose dataclass
docstrings become the help (`dreamfusion config --preset cpu --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import sys
from pathlib import Path

from dreamfusion.errors import UserError, no_extra


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamfusion", description="Text-to-3D with score distillation sampling."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="turn a sentence into a 3D field",
        description="Turn a sentence into a 3D field. Any config field can be set too, e.g. --optim.lr 1e-3; "
        "list them with `dreamfusion config --preset NAME --help`.",
    )
    gen.add_argument("prompt", help='what to make, e.g. "a ceramic mug"')
    gen.add_argument("--out", type=Path, default=None, help="run folder (default: outputs/<prompt>)")
    gen.add_argument(
        "--preset",
        default="auto",
        help="auto | smoke | cpu | default | paper (default: auto = default on a GPU, cpu on a CPU)",
    )
    gen.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    gen.add_argument("--steps", type=int, default=None, help="optimization steps (default: the preset's)")
    gen.add_argument("--guidance", default=None, help="guidance backend (default: the preset's)")
    gen.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    gen.add_argument("--model", default=None, help="hub id or local folder of the guidance model's weights")
    gen.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--no-mesh", action="store_true", help="do not export RUN/mesh.glb at the end")
    gen.add_argument("--no-video", action="store_true", help="do not render RUN/turntable.mp4 at the end")
    gen.add_argument("--view", action="store_true", help="serve a live web viewer of the field as it trains")
    gen.add_argument("--port", type=int, default=8080, help="port of the --view viewer (default: 8080)")

    sub.add_parser("presets", help="list the presets")

    conf = sub.add_parser("config", help="print a preset's resolved config as JSON", add_help=False)
    conf.add_argument("--preset", default="default")
    _asset_parsers(sub)
    from dreamfusion.prior_training.cli import add_parsers as _prior_parsers  # argparse only; no torch import

    _prior_parsers(sub)
    from dreamfusion.bench.cli import add_parsers as _bench_parsers  # argparse only; no torch import

    _bench_parsers(sub)
    return parser


def _asset_parsers(sub) -> None:
    """export, render and view: each takes a run folder (or one of its checkpoints)."""
    exp = sub.add_parser(
        "export",
        help="extract a textured mesh from a run",
        description="Marching cubes on the density, floaters removed, decimated, UV-unwrapped, "
        "albedo baked into a texture (docs/export.md).",
    )
    exp.add_argument("run", type=Path, help="run folder (or checkpoint file)")
    exp.add_argument("--out", type=Path, default=None, help="mesh file (default: RUN/mesh.<format>)")
    exp.add_argument("--format", default=None, help="glb | obj | ply (default: from --out, else glb)")
    exp.add_argument("--resolution", type=int, default=256, help="grid per axis, 16-512 (default 256)")
    exp.add_argument("--texture-size", type=int, default=1024, help="texture side; 0 = vertex colors (1024)")
    exp.add_argument("--level", default="auto", help="density iso-level, or auto (default: auto)")
    exp.add_argument("--faces", type=int, default=50000, help="decimate to this many faces; 0: keep all")
    exp.add_argument(
        "--keep-fraction",
        type=float,
        default=0.05,
        help="drop parts with fewer faces than this fraction of the largest (default 0.05)",
    )
    exp.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")

    ren = sub.add_parser("render", help="render a turntable video of a run")
    ren.add_argument("run", type=Path, help="run folder (or checkpoint file)")
    ren.add_argument("--video", type=Path, default=None, help="out.mp4 or out.gif (RUN/turntable_MODE.mp4)")
    ren.add_argument("--mode", default="color", help="color|albedo|textureless|normal|depth (default color)")
    ren.add_argument("--frames", type=int, default=120, help="frames in one orbit (default 120)")
    ren.add_argument("--elevation", type=float, default=15.0, help="camera elevation, degrees (default 15)")
    ren.add_argument("--size", type=int, default=256, help="width and height, 16-2048 (default 256)")
    ren.add_argument("--distance", type=float, default=1.3, help="camera distance (default 1.3)")
    ren.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    ren.add_argument(
        "--light",
        default="camera",
        help="camera[:AZ,EL] turns with the camera (30,30); world:AZ,EL[,DIST] stays put",
    )
    ren.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")

    view = sub.add_parser("view", help="serve a web viewer of a run (mesh and field renders)")
    view.add_argument("run", type=Path, help="run folder (or checkpoint file)")
    view.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    view.add_argument("--host", default="127.0.0.1", help="interface; 0.0.0.0 for all (default: local)")
    view.add_argument("--mesh", type=Path, default=None, help="mesh (default: RUN/mesh.glb, else extracted)")
    view.add_argument("--resolution", type=int, default=128, help="grid of a mesh extracted on the fly")
    view.add_argument("--show", default="mesh", help="what the page shows first: mesh | field (default mesh)")
    view.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def _generate(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.api import apply_overrides, auto_preset, generate, own_prior, resolve_config

    preset, device = args.preset, args.device
    if preset == "auto":
        preset, device = auto_preset(device)
        print(f"preset:      {preset} on {device} (auto; --preset and --device choose)")
    cfg = resolve_config(preset, args.steps, args.seed, args.guidance, device)
    cfg = apply_overrides(cfg, extra, "dreamfusion generate PROMPT")
    if args.model is not None:
        cfg = own_prior(
            dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, model=args.model)), extra
        )
    result = generate(
        args.prompt,
        out=args.out,
        resume=args.resume,
        config=cfg,
        progress=not args.quiet,
        export_mesh=not args.no_mesh,
        turntable=not args.no_video,
        view=args.view,
        view_port=args.port,
    )
    print(f"run folder:  {result.run_dir}")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"preview:     {result.preview}")
    print(f"metrics:     {result.metrics}")
    if result.mesh:
        print(f"mesh:        {result.mesh}")
    if result.video:
        print(f"turntable:   {result.video}")
    if result.skipped_steps:
        print(f"warning: {result.skipped_steps} steps had non-finite gradients and were skipped")
    return 0


def _config(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.api import apply_overrides, resolve_config
    from dreamfusion.config import to_dict

    cfg = resolve_config(args.preset)
    cfg = apply_overrides(cfg, extra, f"dreamfusion config --preset {args.preset}")
    print(json.dumps(to_dict(cfg), indent=2))
    return 0


def _export(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.export import ExportOptions, export_mesh, validate_options
    from dreamfusion.training.loading import find_checkpoint, load_run

    no_extra(extra)
    level = None if args.level == "auto" else _float(args.level, "--level must be 'auto' or a number")
    fmt = args.format or (args.out.suffix.lstrip(".") if args.out and args.out.suffix else "glb")
    out = args.out or (find_checkpoint(args.run).parent.parent / f"mesh.{fmt}")
    options = ExportOptions(args.resolution, level, args.texture_size, args.faces, args.keep_fraction)
    validate_options(options)  # before the (slower) load
    run = load_run(args.run, _device(args.device))
    r = export_mesh(run.field, out, options, fmt=fmt)
    texture = f"{r.texture_size[0]}x{r.texture_size[1]} texture" if r.texture_size else "vertex colors"
    print(f"mesh:        {r.path} ({r.faces} faces, {r.vertices} vertices, {texture})")
    print(f"level:       {r.level.value:.4g} ({r.level.rule}), {r.floaters_removed} floaters removed")
    print(f"watertight:  {'yes' if r.watertight else 'no (decimation pinched the surface; try --faces 0)'}")
    print(f"time:        {r.seconds:.1f} s")
    return 0


def _render(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.export import check_output
    from dreamfusion.export.turntable import (
        VIDEO_SUFFIXES,
        TurntableOptions,
        parse_light,
        validate,
        write_turntable,
    )
    from dreamfusion.training.loading import find_checkpoint, load_run

    no_extra(extra)
    options = TurntableOptions(
        frames=args.frames,
        size=args.size,
        mode=args.mode,
        elevation=args.elevation,
        distance=args.distance,
        light=parse_light(args.light),
        fps=args.fps,
    )
    validate(options)
    video = args.video or (find_checkpoint(args.run).parent.parent / f"turntable_{args.mode}.mp4")
    check_output(video, VIDEO_SUFFIXES)
    run = load_run(args.run, _device(args.device))
    path = write_turntable(run.field, run.background, run.config, video, options)
    print(f"turntable:   {path} ({options.frames} frames, {options.size}x{options.size}, {options.mode})")
    return 0


def _view(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.viewer.server import serve_run

    no_extra(extra)
    serve_run(
        args.run,
        host=args.host,
        port=args.port,
        mesh=args.mesh,
        resolution=args.resolution,
        device=_device(args.device),
        show=args.show,
    )
    return 0


def _float(text: str, message: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{message} (got '{text}')") from None


def _device(name: str):
    from dreamfusion.training.trainer import resolve_device

    return resolve_device(name)


def _bench(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.bench.cli import run

    return run(args, extra)


def _prior(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.prior_training.cli import run

    no_extra(extra)
    return run(args)


COMMANDS = {"export": _export, "render": _render, "view": _view, "prior": _prior, "bench": _bench}


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args, extra = _parser().parse_known_args(argv)
    try:
        if args.command == "presets":
            from dreamfusion.presets import PRESETS

            print(f"{'auto':8s} generate's default: `default` on a GPU, `cpu` on a CPU")
            for name, fn in PRESETS.items():
                print(f"{name:8s} {(fn.__doc__ or '').strip().splitlines()[0]}")
            return 0
        if args.command == "config":
            return _config(args, extra)
        if args.command in COMMANDS:
            return COMMANDS[args.command](args, extra)
        return _generate(args, extra)
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
