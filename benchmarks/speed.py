"""Seconds per training iteration, split into render / guidance / backward / optimizer.

    python benchmarks/speed.py --presets cpu default --steps 20 --device cpu --out speed.json
    python benchmarks/speed.py --presets cpu --occupancy on --field-from outputs/red-sphere
    python benchmarks/speed.py --presets cpu --high-noise-model bundled   # with the high-noise expert
    python benchmarks/speed.py --presets default --high-noise-model none   # without it
    python benchmarks/speed.py --presets default --device cuda --profile 10  # where a step's time goes
    python benchmarks/speed.py --presets default --device cuda --field.hash-kernel torch  # PyTorch hash grid
    python benchmarks/speed.py --presets default --device cuda --guidance.dtype float16  # any config flag

Each preset runs `--warmup` untimed steps, then `--steps` timed ones (with the device synchronized
around each phase), past the albedo-only warm-up so lit renders (which need normals) are included.
Writes JSON and prints a table. Any other arguments are config flags, as `dreamfusion generate`
takes them (`--field.hash-kernel torch`), applied to each preset and recorded in the JSON.

Empty-space skipping (`--occupancy on`) only pays once training has carved empty space out of the
initial density blob, which fills the whole bounding sphere: time a trained field with
`--field-from RUN` (a run of the same preset; its field and background weights are loaded), or
give a long `--warmup`. The grid is refreshed at the first step and every
`render.occupancy_update_every` steps; one refresh is timed apart and spread over that period in
`seconds_per_iteration_amortized`. The phase timer synchronizes the device, which keeps the CPU
from queueing kernels ahead of the GPU; a second pass without it gives the rate training runs at
(`seconds_per_iteration_unsynchronized`, refreshes included at their cadence).

`--profile N` runs N more unsynchronized steps under torch.profiler and adds, per step: the host's
wall time, the time the device was busy running kernels (their union), how many kernels were
launched, and the ops that took most device (or, on a CPU, host) time. A step whose busy time is
well under its wall time is bound by the host launching kernels, not by the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from dreamfusion.api import GUIDANCE_BACKENDS, apply_flags, resolve_config
from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.training.checkpoint import load_checkpoint
from dreamfusion.training.loading import find_checkpoint
from dreamfusion.training.trainer import Trainer

PHASES = ("render", "guidance", "backward", "optimizer", "occupancy", "interior")
TOP_OPS = 15


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: kernels of concurrent streams overlap."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def profile_steps(trainer: Trainer, steps: int) -> dict:
    """Per-step host wall time, device busy time and kernel count over `steps` steps under
    torch.profiler, and the ops that took most of the time (device time on CUDA, host on a CPU)."""
    cuda = trainer.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = _busy_seconds([(e.time_range.start / 1e6, e.time_range.end / 1e6) for e in kernels])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = sorted(prof.key_averages(), key=lambda a: getattr(a, key), reverse=True)[:TOP_OPS]
    return {
        "steps": steps,
        "wall_seconds_per_step": wall / steps,
        "device_busy_seconds_per_step": busy / steps if cuda else None,
        "kernels_per_step": len(kernels) / steps if cuda else None,
        "top_ops": [
            {
                "name": a.key,
                "calls_per_step": a.count / steps,
                "seconds_per_step": getattr(a, key) / 1e6 / steps,
            }
            for a in table
        ],
    }


def bench(
    preset: str,
    steps: int,
    warmup: int,
    device: str,
    guidance: str | None,
    occupancy: str = "preset",
    field_from: Path | None = None,
    high_noise_model: str | None = None,
    profile: int = 0,
    flags: list[str] | None = None,
) -> dict:
    cfg = resolve_config(preset, guidance=guidance, device=device)
    cfg = apply_flags(cfg, flags or [], "benchmarks/speed.py")
    if high_noise_model is not None:
        expert = None if high_noise_model == "none" else high_noise_model
        cfg = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, high_noise_model=expert))
    render = cfg.render
    if occupancy != "preset":
        render = dataclasses.replace(render, occupancy_grid=occupancy == "on", occupancy_warmup_steps=0)
    cfg = dataclasses.replace(
        cfg,
        render=render,
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
        if field_from is not None:
            ckpt = load_checkpoint(find_checkpoint(field_from))
            trainer.field.load_state_dict({k: v.to(device) for k, v in ckpt.section("field").items()})
            trainer.background.load_state_dict(
                {k: v.to(device) for k, v in ckpt.section("background").items()}
            )
        for _ in range(warmup):
            trainer.train_step()
        trainer.timer.totals.clear()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        evaluated = []
        start = time.perf_counter()
        for _ in range(steps):
            evaluated.append(trainer.train_step().get("evaluated"))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total = (time.perf_counter() - start) / steps
        # Again without the phase timer's synchronizations, which stop the CPU from queueing
        # kernels ahead of the GPU: the rate training itself runs at.
        phase_totals = dict(trainer.timer.totals)
        trainer.timer.sync = False
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        unsynchronized = (time.perf_counter() - start) / steps
        profiled = profile_steps(trainer, profile) if profile > 0 else None
        trainer.timer.sync = True
        update = None
        if trainer.occupancy is not None:
            with trainer.timer("refresh"):
                trainer.occupancy.update(trainer.field, torch.Generator(device).manual_seed(0))
            update = trainer.timer.totals["refresh"]
    phases = {k: phase_totals.get(k, 0.0) / steps for k in PHASES}
    amortized = total
    if update is not None:
        amortized = total - phases["occupancy"] + update / cfg.render.occupancy_update_every
    return {
        "preset": preset,
        "guidance": cfg.guidance.name,
        "high_noise_model": cfg.guidance.high_noise_model,
        "device": device,
        "resolution": cfg.camera.resolution,
        "samples_per_ray": cfg.render.samples_per_ray,
        "batch_size": cfg.train.batch_size,
        "field": cfg.field.kind,
        "hash_kernel": cfg.field.hash_kernel,
        "flags": flags or [],
        "field_from": str(field_from) if field_from is not None else None,
        "occupancy_grid": cfg.render.occupancy_grid,
        "samples_evaluated_share": sum(evaluated) / steps if None not in evaluated else None,
        "occupancy_update_seconds": update,
        "seconds_per_iteration": total,
        "seconds_per_iteration_unsynchronized": unsynchronized,
        "seconds_per_iteration_amortized": amortized,
        "phases_seconds": phases,
        "phases_share": {k: v / max(total, 1e-12) for k, v in phases.items()},
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "profile": profiled,
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
    parser.add_argument(
        "--occupancy",
        choices=("preset", "on", "off"),
        default="preset",
        help="empty-space skipping: as the preset says, or forced on (refreshed from the first step) or off",
    )
    parser.add_argument(
        "--field-from", type=Path, default=None, help="start from this run's trained field (same preset)"
    )
    parser.add_argument(
        "--high-noise-model",
        default=None,
        help="bundled guidance: a high-noise expert beside the prior ('bundled' for the packaged one, "
        "'none' for the prior alone); default: as the preset says",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="profile this many more steps (device busy time, top ops)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args, flags = parser.parse_known_args()  # the rest: config flags, as `generate` takes them

    rows = [
        bench(
            p,
            args.steps,
            args.warmup,
            args.device,
            args.guidance,
            args.occupancy,
            args.field_from,
            args.high_noise_model,
            args.profile,
            flags,
        )
        for p in args.presets
    ]
    report = {"machine": machine_info(), "commit": git_commit(), "steps": args.steps, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"machine: {report['machine']}")
    print(
        f"{'preset':8s} {'device':6s} {'res':>4s} {'spp':>4s} {'grid':>4s} {'eval':>5s} {'s/it':>8s} "
        f"{'amort':>8s} {'unsync':>8s}  " + "  ".join(f"{p:>9s}" for p in PHASES)
    )
    for r in rows:
        shares = "  ".join(f"{100 * r['phases_share'][p]:8.1f}%" for p in PHASES)
        share = r["samples_evaluated_share"]
        print(
            f"{r['preset']:8s} {r['device']:6s} {r['resolution']:4d} {r['samples_per_ray']:4d} "
            f"{'on' if r['occupancy_grid'] else 'off':>4s} {'-' if share is None else f'{share:.2f}':>5s} "
            f"{r['seconds_per_iteration']:8.3f} {r['seconds_per_iteration_amortized']:8.3f} "
            f"{r['seconds_per_iteration_unsynchronized']:8.3f}  {shares}"
        )
    for r in rows:
        prof = r["profile"]
        if prof is None:
            continue
        busy, wall = prof["device_busy_seconds_per_step"], prof["wall_seconds_per_step"]
        line = f"\n{r['preset']} profiled over {prof['steps']} steps: {1e3 * wall:.1f} ms wall"
        if busy is not None:
            line += f", device busy {1e3 * busy:.1f} ms, {prof['kernels_per_step']:.0f} kernels"
        print(line + " a step")
        for op in prof["top_ops"]:
            ms, calls = 1e3 * op["seconds_per_step"], op["calls_per_step"]
            print(f"  {ms:8.2f} ms  {calls:7.1f}x  {op['name'][:80]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
