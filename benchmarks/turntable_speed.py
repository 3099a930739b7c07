"""Turntable render time of a finished run, and how far its frames move from the exact render.

    python benchmarks/turntable_speed.py RUN --device cuda
    python benchmarks/turntable_speed.py RUN --device cpu --frames 16 --out outputs/turntable.json

Renders the run's `color` turntable (the one `generate` writes) twice: as previews and turntables
render (normals only at the samples the weights show, see render.renderer.NORMALS_DROPPED_WEIGHT)
and exactly (normals at every sample). Writes JSON with both times and the largest and mean
difference of the 8-bit frames, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.export.turntable import TurntableOptions, render_turntable
from dreamfusion.fields.base import device_of
from dreamfusion.render import renderer
from dreamfusion.training.lifecycle import resolve_device
from dreamfusion.training.loading import load_run


def _timed(run, options: TurntableOptions) -> tuple[np.ndarray, float]:
    cuda = device_of(run.field).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    frames = render_turntable(run.field, run.background, run.config, options)
    if cuda:
        torch.cuda.synchronize()
    return frames, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("outputs/turntable_speed.json"))
    args = parser.parse_args()

    run = load_run(args.run, resolve_device(args.device))
    options = TurntableOptions(frames=args.frames, size=args.size)
    render_turntable(
        run.field, run.background, run.config, TurntableOptions(frames=1, size=args.size)
    )  # warm-up
    fast, fast_s = _timed(run, options)
    budget = renderer.NORMALS_DROPPED_WEIGHT
    renderer.NORMALS_DROPPED_WEIGHT = 0.0  # every sample's weight passes: normals everywhere
    try:
        exact, exact_s = _timed(run, options)
    finally:
        renderer.NORMALS_DROPPED_WEIGHT = budget
    diff = np.abs(fast.astype(np.int16) - exact.astype(np.int16))
    record = {
        "benchmark": "turntable render",
        "command": f"python benchmarks/turntable_speed.py RUN --device {args.device} --frames {args.frames}",
        "run_preset_resolution": run.config.camera.resolution,
        "frames": args.frames,
        "size": args.size,
        "seconds": round(fast_s, 3),
        "seconds_normals_everywhere": round(exact_s, 3),
        "speedup": round(exact_s / fast_s, 2),
        "max_pixel_difference": int(diff.max()),
        "mean_pixel_difference": float(diff.mean()),
        "commit": git_commit(),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    header = ("frames", "size", "seconds", "exact s", "speedup", "max diff", "mean diff")
    print(" ".join(f"{h:>9}" for h in header))
    print(
        f"{args.frames:>9} {args.size:>9} {fast_s:>9.2f} {exact_s:>9.2f} {exact_s / fast_s:>9.2f} "
        f"{record['max_pixel_difference']:>9} {record['mean_pixel_difference']:>9.4f}"
    )


if __name__ == "__main__":
    main()
