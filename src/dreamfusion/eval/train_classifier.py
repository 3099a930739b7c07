"""Train the world classifier and report its held-out accuracy per class.

    python -m dreamfusion.eval.train_classifier --device cuda --steps 6000 \
        --out src/dreamfusion/eval/classifier.safetensors --report classifier_report.json

The renders dominate the time: a GPU takes minutes, a CPU is far too slow for the full run, so
use a GPU or shrink --steps for a try.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from dreamfusion.atomic import atomic_write
from dreamfusion.eval.classifier import (
    WEIGHTS,
    evaluate_classifier,
    file_sha256,
    load_classifier,
    save_classifier,
    train_classifier,
)


def accuracy_table(report: dict) -> str:
    """Markdown tables of held-out accuracy: per shape, per color, and overall."""
    lines = ["| shape | accuracy |", "|---|---|"]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in report["shape"].items()]
    lines += ["", "| color | accuracy (albedo and lambertian images) |", "|---|---|"]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in report["color"].items()]
    o = report["overall"]
    lines += [
        "",
        f"Overall on {report['n']} held-out renders (seed {report['seed']}): shape {o['shape']:.4f}, "
        f"color {o['color']:.4f}, shading mode {o['mode']:.4f}.",
    ]
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--buffer", type=int, default=32768, help="replay buffer of renders")
    parser.add_argument("--fresh", type=int, default=64, help="new renders per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="stop training within this time")
    parser.add_argument("--eval-n", type=int, default=6000, help="held-out renders")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--init", type=Path, default=None, help="fine-tune these weights instead")
    parser.add_argument("--report", type=Path, default=None, help="write the accuracy report (JSON) here")
    args = parser.parse_args()

    start = time.perf_counter()
    model = train_classifier(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        width=args.width,
        device=args.device,
        seed=args.seed,
        buffer_size=args.buffer,
        fresh_per_step=args.fresh,
        time_budget_s=None if args.minutes is None else 60.0 * args.minutes,
        init=None if args.init is None else load_classifier(args.init),
    )
    train_seconds = time.perf_counter() - start
    save_classifier(model, args.out, extra={"steps": str(model.steps_trained), "seed": str(args.seed)})
    # Score the saved (float16) weights, not the live model: the numbers describe the shipped file.
    report = evaluate_classifier(load_classifier(args.out, args.device), n=args.eval_n, device=args.device)
    if torch.device(args.device).type == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    report.update(
        train_seconds=train_seconds,
        steps=model.steps_trained,
        batch=args.batch,
        buffer=args.buffer,
        fresh=args.fresh,
        train_seed=args.seed,
        device=device_name,
        commit=_commit(),
        weights=str(args.out),
        sha256=file_sha256(args.out),
        size_bytes=args.out.stat().st_size,
    )
    print(accuracy_table(report))
    print(
        f"trained in {train_seconds:.0f} s on {device_name}; "
        f"weights {args.out} ({report['size_bytes']} bytes)"
    )
    if args.report is not None:
        atomic_write(args.report, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))


if __name__ == "__main__":
    main()
