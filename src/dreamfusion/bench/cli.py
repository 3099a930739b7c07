"""`dreamfusion bench fidelity` and `dreamfusion bench merge`: argparse only here; work is imported lazily.

dreamfusion bench fidelity [--out DIR] [--preset NAME] [--only OBJECT ...] [--seeds N ...] [--limit N]
                           [--steps N] [--checkpoint-every N] [--guidance NAME] [--device cpu|cuda]
                           [--jobs N] [--address auto|HOST:PORT] [--gpus-per-run F] [--cpus-per-run N]
                           [--section.field VALUE ...]
dreamfusion bench merge DIR DIR ... --out DIR [--no-sheet]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from dreamfusion.errors import UserError


def add_parsers(sub) -> None:
    """bench fidelity: the known-truth benchmark of docs/evaluation.md."""
    bench = sub.add_parser("bench", help="benchmarks against the world's ground truth")
    which = bench.add_subparsers(dest="bench", required=True)
    fid = which.add_parser(
        "fidelity",
        help="train a fixed prompt set of world objects and score every result against its truth",
        description="Train every prompt x seed of a versioned prompt set, score each run against the "
        "world's ground truth (IoUs, Chamfer, color, shape, front, IoU against time) and write "
        "OUT/fidelity.json, OUT/fidelity.md and OUT/contact_sheet.png. Resumes: finished runs are not "
        "trained again. Config fields can be set too, e.g. --render.samples-per-ray 32.",
    )
    fid.add_argument("--out", type=Path, default=Path("outputs/fidelity"), help="(default outputs/fidelity)")
    fid.add_argument("--prompt-set", default="fidelity-v2", help="packaged set or .json file (fidelity-v2)")
    fid.add_argument("--preset", default="default", help="smoke | cpu | default | paper (default: default)")
    fid.add_argument("--guidance", default="bundled", help="guidance backend (default: bundled)")
    fid.add_argument("--only", nargs="+", default=[], metavar="OBJECT", help="only these objects")
    fid.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the set's)")
    fid.add_argument("--limit", type=int, default=None, help="at most N runs (seed by seed)")
    fid.add_argument("--steps", type=int, default=None, help="optimization steps (default: the preset's)")
    fid.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint (and time-to-quality point) every N steps (default: the preset's)",
    )
    fid.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    fid.add_argument("--resolution", type=int, default=64, help="grid of the IoUs, per axis (default 64)")
    fid.add_argument("--frame-size", type=int, default=96, help="contact-sheet frame side (default 96)")
    fid.add_argument("--no-mesh", action="store_true", help="skip the mesh and its Chamfer distance")
    fid.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every checkpoint of a scored run (default: only the newest)",
    )
    fid.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, sharing the GPUs (or cores) equally, each in its own process (default 1)",
    )
    fid.add_argument(
        "--address", default=None, help="join a Ray cluster: auto or HOST:PORT (default: start one here)"
    )
    fid.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per run; 0.125: 8 on a GPU")
    fid.add_argument("--cpus-per-run", type=float, default=None, help="CPU cores per run")
    fid.add_argument("--quiet", action="store_true", help="no progress bars")
    merge = which.add_parser(
        "merge",
        help="one report from benchmark outputs made in parts (other seeds, objects or machines)",
        description="Read DIR/fidelity.json of each part and write OUT/fidelity.json, OUT/fidelity.md "
        "and OUT/contact_sheet.png (unless --no-sheet) over all their runs: targets, seed spread and "
        "time to quality recomputed, each part's command, commit and machine listed.",
    )
    merge.add_argument("parts", type=Path, nargs="+", metavar="DIR", help="benchmark output folders")
    merge.add_argument("--out", type=Path, required=True, help="folder of the merged report")
    merge.add_argument(
        "--no-sheet", action="store_true", help="no contact sheet (the parts' frame images are gone)"
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.bench == "merge":
        return _merge(args, extra)
    import torch

    from dreamfusion.api import apply_overrides, resolve_config
    from dreamfusion.bench.runner import BenchOptions, run_benchmark

    device = args.device or ("cuda" if torch.cuda.is_available() or args.address else "cpu")
    cfg = resolve_config(args.preset, args.steps, None, args.guidance, device)
    cfg = apply_overrides(cfg, extra, "dreamfusion bench fidelity")
    train = cfg.train
    if args.checkpoint_every is not None:
        train = dataclasses.replace(train, checkpoint_every=args.checkpoint_every)
    if args.quiet:
        train = dataclasses.replace(train, progress=False)
    options = BenchOptions(
        config=dataclasses.replace(cfg, train=train),
        out=args.out,
        preset=args.preset,
        overrides=tuple(extra),
        prompt_set=args.prompt_set,
        only=tuple(args.only),
        seeds=None if args.seeds is None else tuple(args.seeds),
        limit=args.limit,
        resolution=args.resolution,
        mesh=not args.no_mesh,
        frame_size=args.frame_size,
        keep_checkpoints=args.keep_checkpoints,
        jobs=args.jobs,
        address=args.address,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
    )
    report = run_benchmark(options, log=lambda line: print(line, flush=True))
    _print_targets(report, args.out)
    return 0


def _merge(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.bench.report import merge_reports, write_report
    from dreamfusion.errors import no_extra

    no_extra(extra)
    parts = []
    for folder in args.parts:
        path = folder / "fidelity.json"
        try:
            parts.append((folder, json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            raise UserError(
                f"cannot read {path} ({e}); give folders written by `dreamfusion bench fidelity`"
            ) from None
    try:
        report = merge_reports(parts, args.out)
    except (KeyError, ValueError) as e:
        raise UserError(f"cannot merge: {e}") from None
    frames = [] if args.no_sheet else [args.out.absolute() / r["frames"] for r in report["runs"]]
    missing = [path for path in map(os.path.normpath, frames) if not Path(path).is_file()]
    if missing:
        raise UserError(
            f"frame image {missing[0]} is missing ({len(missing)} in all); keep the parts' runs/ "
            "folders, or pass --no-sheet"
        )
    write_report(report, args.out, sheet=not args.no_sheet)
    _print_targets(report, args.out)
    return 0


def _print_targets(report: dict, out: Path) -> None:
    print(f"report:      {out / 'fidelity.md'} ({report['runs_done']} runs)")
    for target in report["summary"]["targets"]:
        met = {True: "met", False: "NOT met", None: "-"}[target["met"]]
        value = f"{target['value']:.3f}" if isinstance(target["value"], float) else target["value"]
        print(f"target:      {target['target']}: {value if value is not None else '-'} ({met})")
