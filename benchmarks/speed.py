"""Seconds per training iteration, split into render / guidance / backward / optimizer.

    python benchmarks/speed.py --presets cpu default --steps 20 --device cpu --out speed.json

Each preset runs `--warmup` untimed steps, then `--steps` timed ones (with the device synchronized
around each phase), past the albedo-only warm-up so lit renders (which need normals) are included.
Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from dreamfusion.api import GUIDANCE_BACKENDS, resolve_config
from dreamfusion.provenance import git_commit, machine_info
from dreamfusion.trainer import Trainer

PHASES = ("render", "guidance", "backward", "optimizer")


def bench(preset: str, steps: int, warmup: int, device: str, guidance: str | None) -> dict:
    cfg = resolve_config(preset, guidance=guidance, device=device)
    cfg = dataclasses.replace(
        cfg,
        shading=dataclasses.replace(cfg.shading, albedo_warmup_steps=0),
        train=dataclasses.replace(
            cfg.train,
            steps=warmup + steps,
            progress=False,
            preview_every=0,
            checkpoint_every=10**9,
            profile=True,
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        backend = GUIDANCE_BACKENDS[cfg.guidance.name](cfg, torch.device(device))
        trainer = Trainer("a red sphere", cfg, Path(tmp) / "run", backend)
        for _ in range(warmup):
            trainer.train_step()
        trainer.timer.totals.clear()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total = (time.perf_counter() - start) / steps
    phases = {k: trainer.timer.totals.get(k, 0.0) / steps for k in PHASES}
    return {
        "preset": preset,
        "guidance": cfg.guidance.name,
        "device": device,
        "resolution": cfg.camera.resolution,
        "samples_per_ray": cfg.render.samples_per_ray,
        "batch_size": cfg.train.batch_size,
        "field": cfg.field.kind,
        "seconds_per_iteration": total,
        "phases_seconds": phases,
        "phases_share": {k: v / max(total, 1e-12) for k, v in phases.items()},
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["cpu", "default"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--guidance", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = parser.parse_args()

    rows = [bench(p, args.steps, args.warmup, args.device, args.guidance) for p in args.presets]
    report = {"machine": machine_info(), "commit": git_commit(), "steps": args.steps, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"machine: {report['machine']}")
    print(
        f"{'preset':8s} {'device':6s} {'res':>4s} {'spp':>4s} {'s/it':>8s}  "
        + "  ".join(f"{p:>9s}" for p in PHASES)
    )
    for r in rows:
        shares = "  ".join(f"{100 * r['phases_share'][p]:8.1f}%" for p in PHASES)
        print(
            f"{r['preset']:8s} {r['device']:6s} {r['resolution']:4d} {r['samples_per_ray']:4d} "
            f"{r['seconds_per_iteration']:8.3f}  {shares}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
