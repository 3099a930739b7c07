"""Does SDS with the bundled prior recover 3D? Generate world objects from text and score them.

Each run is `dreamfusion.generate("a <color> <object>", guidance="bundled", preset=..., seed=...)`
followed by `dreamfusion.eval.fidelity.evaluate_run` against the object painted that color. The
default list is the first proof of the bundled prior: sphere, cube and torus in two colors each.

    python benchmarks/sds_recovery.py --preset default --device cuda --out docs/results/sds_recovery
    python benchmarks/sds_recovery.py --preset cpu --runs sphere:red:0 cube:blue:1 --steps 600
    python benchmarks/sds_recovery.py --preset default --field.density-bias -2 --field.blob-density 7

Runs go to OUT/runs/<object>-<color>-s<seed>; a run folder that already holds a checkpoint is
evaluated without training again (so an interrupted benchmark resumes where it stopped).
Config flags (`--section.field VALUE`, as `dreamfusion generate` takes them) change the preset.
Writes OUT.json (every number) and OUT.md (the table).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import dreamfusion
from dreamfusion.api import apply_flags, resolve_config
from dreamfusion.bench.provenance import git_commit
from dreamfusion.bench.report import cell, front_cell
from dreamfusion.errors import UserError
from dreamfusion.eval.fidelity import evaluate_run
from dreamfusion.training.loading import find_checkpoint
from dreamfusion.world import caption

DEFAULT_RUNS = (
    "sphere:red:0",
    "sphere:green:0",
    "cube:blue:0",
    "cube:yellow:0",
    "torus:orange:0",
    "torus:purple:0",
)
"""object:color:seed of the first proof (issue: sphere, cube and torus in two colors each)."""


def parse_run(spec: str) -> tuple[str, str, int]:
    parts = spec.split(":")
    if len(parts) != 3:
        raise SystemExit(f"a run is object:color:seed, got '{spec}'")
    return parts[0], parts[1], int(parts[2])


def markdown(report: dict) -> str:
    lines = [
        "# SDS with the bundled prior: recovery of world objects",
        "",
        f"Command: `{report['command']}`  ",
        f"Commit {report['commit']}, {report['device']}; preset {report['preset']}; occupancy on a "
        f"{report['resolution']}^3 grid at each run's render level (IoU) and support level (support IoU).",
        "",
        "| prompt | seed | IoU | support IoU | initial IoU | scaled IoU (scale) | identified | "
        "albedo -> nearest color | Chamfer | front | train s | wall s | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        front = front_cell(r)
        color = f"{r['nearest_color']} ({'ok' if r['color_correct'] else 'WRONG'})"
        shape = r["identified"] + ("" if r["shape_correct"] else " (WRONG)")
        lines.append(
            f"| {r['prompt']} | {r['seed']} | {cell(r['iou'])} | {cell(r.get('support_iou'))} | "
            f"{cell(r['initial_iou'])} | "
            f"{cell(r['scaled_iou'])} ({r['scale']:.2f}) | {shape} | {color} | {cell(r.get('chamfer'), 4)} | "
            f"{front} | {cell(r['train_seconds'], 1)} | {cell(r['wall_seconds'], 1)} | {r['steps']} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"Mean IoU {s['mean_iou']:.3f} (min {s['min_iou']:.3f}), mean scaled IoU {s['mean_scaled_iou']:.3f}; "
        f"IoU >= 0.6 in {s['iou_over_0.6']}/{s['runs']} runs (at the support level: "
        f"{s['support_iou_over_0.6']}/{s['runs']}); right color in "
        f"{s['color_correct']}/{s['runs']}; shape identified in {s['shape_correct']}/{s['runs']}.",
    ]
    return "\n".join(lines)


def summarize(runs: list[dict]) -> dict:
    ious = [r["iou"] for r in runs]
    return {
        "runs": len(runs),
        "mean_iou": sum(ious) / len(ious),
        "min_iou": min(ious),
        "mean_scaled_iou": sum(r["scaled_iou"] for r in runs) / len(runs),
        "iou_over_0.6": sum(i >= 0.6 for i in ious),
        "support_iou_over_0.6": sum((r.get("support_iou") or 0.0) >= 0.6 for r in runs),
        "color_correct": sum(r["color_correct"] for r in runs),
        "shape_correct": sum(r["shape_correct"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="default", help="dreamfusion preset of every run")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="object:color:seed ...")
    parser.add_argument("--guidance", default="bundled")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=64, help="occupancy grid for the IoUs")
    parser.add_argument("--no-mesh", action="store_true", help="skip mesh extraction and Chamfer distance")
    parser.add_argument(
        "--out", type=Path, default=Path("sds_recovery"), help="writes OUT.json, OUT.md, OUT/runs"
    )
    args, flags = parser.parse_known_args()
    config = apply_flags(resolve_config(args.preset), flags, "benchmarks/sds_recovery.py")

    results = []
    for spec in args.runs:
        obj, color, seed = parse_run(spec)
        prompt = caption(obj, color)
        run_dir = args.out / "runs" / f"{obj}-{color}-s{seed}"
        start = time.perf_counter()
        try:
            find_checkpoint(run_dir)
            trained = False
        except UserError:
            trained = True
        if trained:
            dreamfusion.generate(
                prompt,
                config=config,
                out=run_dir,
                steps=args.steps,
                seed=seed,
                guidance=args.guidance,
                device=args.device,
                progress=False,
                export_mesh=False,
                turntable=False,
            )
        wall = time.perf_counter() - start
        metrics = evaluate_run(run_dir, obj, color, args.device, args.resolution, mesh=not args.no_mesh)
        metrics.update(seed=seed, wall_seconds=wall if trained else None, trained_now=trained)
        results.append(metrics)
        print(
            f"{prompt} (seed {seed}): IoU {metrics['iou']:.3f} (initial {metrics['initial_iou']:.3f}, "
            f"support level {metrics['support_level']:.2f}: IoU {metrics['support_iou']:.3f}, "
            f"initial {metrics['initial_support_iou']:.3f}, {metrics['support_identified']}; "
            f"scaled {metrics['scaled_iou']:.3f} at {metrics['scale']:.2f}), {metrics['identified']}, "
            f"{metrics['nearest_color']}, {metrics['train_seconds']:.1f} s training, "
            f"{metrics['steps']} steps",
            flush=True,
        )

    device = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else platform.machine()
    report = {
        "command": "python benchmarks/sds_recovery.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "device": device,
        "preset": args.preset,
        "guidance": args.guidance,
        "level": results[0]["level"],
        "resolution": args.resolution,
        "summary": summarize(results),
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
