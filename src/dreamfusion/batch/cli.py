"""`dreamfusion batch PROMPTS --out DIR`: argparse only here; the work is imported lazily.

dreamfusion batch PROMPTS [--out DIR] [--seeds N ...] [--preset NAME] [--steps N] [--guidance NAME]
                          [--device cpu|cuda] [--address auto|HOST:PORT] [--gpus-per-run F]
                          [--cpus-per-run N] [--export-task auto|yes|no] [--max-retries N]
                          [--no-mesh] [--no-video] [--quiet] [--section.field VALUE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_batch_parser(sub) -> None:
    batch = sub.add_parser(
        "batch",
        help="train many prompts at once, on every GPU of a machine or a Ray cluster",
        description="Train every prompt of PROMPTS at every seed, each into its own run folder "
        "OUT/<prompt>-s<seed> (the folder `generate` makes), as many at once as the machine or Ray "
        "cluster holds. OUT/batch.json lists every run's status and figures. Running the same command "
        "again skips finished runs and resumes the others. Config fields can be set too, e.g. "
        "--optim.lr 1e-3.",
    )
    batch.add_argument("prompts", type=Path, help="text file (one prompt a line, # comments) or JSON list")
    batch.add_argument("--out", type=Path, default=Path("outputs/batch"), help="(default outputs/batch)")
    batch.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every prompt (default 0)")
    batch.add_argument("--preset", default="auto", help="auto | smoke | cpu | default | paper (default auto)")
    batch.add_argument("--steps", type=int, default=None, help="optimization steps (default: the preset's)")
    batch.add_argument("--guidance", default=None, help="guidance backend (default: the preset's)")
    batch.add_argument("--device", default=None, help="cpu or cuda (default: cuda when the cluster has GPUs)")
    batch.add_argument(
        "--address", default=None, help="join a Ray cluster: auto or HOST:PORT (default: start one here)"
    )
    batch.add_argument(
        "--gpus-per-run", type=float, default=None, help="GPUs per run; 0.125: 8 on a GPU (default 1 on CUDA)"
    )
    batch.add_argument("--cpus-per-run", type=float, default=1, help="CPU cores per run (default 1)")
    batch.add_argument(
        "--export-task",
        choices=("auto", "yes", "no"),
        default="auto",
        help="mesh and turntable in a task of their own on CPU cores, freeing the GPU for the next run "
        "(auto: when runs use GPUs)",
    )
    batch.add_argument(
        "--max-retries", type=int, default=3, help="reruns of a run whose worker or node died (default 3)"
    )
    batch.add_argument("--no-mesh", action="store_true", help="do not export RUN/mesh.glb")
    batch.add_argument("--no-video", action="store_true", help="do not render RUN/turntable.mp4")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")


def run_batch(args: argparse.Namespace, extra: list[str]) -> int:
    from dreamfusion.batch.prompts import read_prompts
    from dreamfusion.batch.runner import generate_many, summary
    from dreamfusion.errors import UserError

    records = generate_many(
        read_prompts(args.prompts),
        seeds=args.seeds,
        out=args.out,
        preset=args.preset,
        steps=args.steps,
        guidance=args.guidance,
        device=args.device,
        overrides=extra,
        address=args.address,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        export_mesh=not args.no_mesh,
        turntable=not args.no_video,
        export_task_on_cpu={"auto": None, "yes": True, "no": False}[args.export_task],
        max_retries=args.max_retries,
        progress=not args.quiet,
        log=lambda line: print(line, flush=True),
    )
    line = summary(records, args.out)
    if any(r.get("status") == "failed" for r in records):
        raise UserError(f"{line}; fix the cause and run the same command again")
    print(line)
    return 0
