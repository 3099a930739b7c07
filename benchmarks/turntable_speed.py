"""Turntable render time of a finished run, from the field and from its mesh.

    python benchmarks/turntable_speed.py RUN --device cuda
    python benchmarks/turntable_speed.py RUN --device cpu --frames 16 --out outputs/turntable.json

Renders the run's `color` turntable (the one `generate` writes) three ways: from the field as
turntables render it (normals only at the samples the weights show, see
render.renderer.NORMALS_DROPPED_WEIGHT), from the field with normals at every sample, and, where
RUN/mesh.glb exists, from that mesh (`--turntable-from mesh`). Writes JSON with the times and the
largest and mean difference of the 8-bit frames to the first, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.export.turntable import TurntableOptions, render_mesh_turntable, render_turntable
from dreamfusion.fields.base import device_of
from dreamfusion.render import renderer
from dreamfusion.training.lifecycle import resolve_device
from dreamfusion.training.loading import load_run


def _timed(run, options: TurntableOptions, mesh: Path | None = None) -> tuple[np.ndarray, float]:
    device = device_of(run.field)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if mesh is None:
        frames = render_turntable(run.field, run.background, run.config, options)
    else:
        frames = render_mesh_turntable(mesh, run.background, run.config, options, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return frames, time.perf_counter() - start


def _difference(frames: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
    return int(diff.max()), float(diff.mean())


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
    warm_up = TurntableOptions(frames=1, size=args.size)
    render_turntable(run.field, run.background, run.config, warm_up)
    field, field_s = _timed(run, options)
    rows = [("field", field_s, 0, 0.0)]
    budget = renderer.NORMALS_DROPPED_WEIGHT
    renderer.NORMALS_DROPPED_WEIGHT = 0.0  # every sample's weight passes: normals everywhere
    try:
        exact, exact_s = _timed(run, options)
    finally:
        renderer.NORMALS_DROPPED_WEIGHT = budget
    rows.append(("field, normals everywhere", exact_s, *_difference(exact, field)))
    mesh_path = args.run / "mesh.glb"
    if mesh_path.is_file():
        render_mesh_turntable(mesh_path, run.background, run.config, warm_up, device_of(run.field))
        mesh, mesh_s = _timed(run, options, mesh_path)
        rows.append(("mesh", mesh_s, *_difference(mesh, field)))
    record = {
        "benchmark": "turntable render",
        "command": f"python benchmarks/turntable_speed.py RUN --device {args.device} --frames {args.frames}",
        "run_preset_resolution": run.config.camera.resolution,
        "frames": args.frames,
        "size": args.size,
        "rows": [
            {
                "source": name,
                "seconds": round(sec, 3),
                "max_pixel_difference": mx,
                "mean_pixel_difference": mean,
            }
            for name, sec, mx, mean in rows
        ],
        "commit": git_commit(),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"{args.frames} frames of {args.size}x{args.size}; differences to the field's frames, of 255")
    print(f"{'source':<27} {'seconds':>8} {'max diff':>8} {'mean diff':>9}")
    for name, sec, mx, mean in rows:
        print(f"{name:<27} {sec:>8.2f} {mx:>8} {mean:>9.3f}")


if __name__ == "__main__":
    main()
