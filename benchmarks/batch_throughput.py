"""Runs per hour of `dreamfusion batch`: N prompts of the fidelity set, one after another in this
process or through Ray.

    python benchmarks/batch_throughput.py --mode sequential --runs 8
    python benchmarks/batch_throughput.py --mode ray --runs 16 --gpus-per-run 0.125
    python benchmarks/batch_throughput.py --mode ray --address auto --runs 64   # a running cluster
    python benchmarks/batch_throughput.py --mode ray --preset smoke --steps 2 --device cpu   # a quick check
    python benchmarks/batch_throughput.py --mode ray --runs 8 --gpus-per-run 0.125 --assets --tail here
    python benchmarks/batch_throughput.py --mode ray --runs 8 --gpus-per-run 0.125 --assets \
        --turntable-from field

The runs train into a fresh temporary folder (or --work DIR, which must hold no runs yet: the
benchmark times fresh runs, not a resumed batch), without mesh and turntable unless
--assets. Writes JSON (runs/hour, wall seconds, each run's training seconds, Ray's start-up
seconds, each run's start latency and its time in the task outside training; with --assets, the
mesh and turntable seconds and each stage's share of the summed run time) and prints a table.
Each run's turntable rasterizes its mesh, as `batch` does; --turntable-from field volume-renders
the field instead.
--tail says where a run's mesh and turntable are made: in its training task, on its device
("here", as `batch` does by default), or in a CPU task of their own ("apart", `--export-task`).
Start latency counts a run's wait for a free slot; `first_wave_start_s` is that of the runs that
could start at once, the scheduling overhead proper.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from dreamfusion.batch.runner import generate_many
from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.bench.runner import load_prompt_set


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("sequential", "ray"), default="ray")
    parser.add_argument("--runs", type=int, default=8, help="prompts of fidelity-v2, at seed 0")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--address", default=None, help="a running Ray cluster (default: a local one)")
    parser.add_argument("--gpus-per-run", type=float, default=None)
    parser.add_argument("--cpus-per-run", type=float, default=1)
    parser.add_argument("--assets", action="store_true", help="export mesh and turntable too")
    parser.add_argument(
        "--tail", choices=("here", "apart"), default="here", help="mesh and turntable: training task or own"
    )
    parser.add_argument("--turntable-from", choices=("mesh", "field"), default="mesh")
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/...)")
    args = parser.parse_args()

    if args.work is not None and (args.work / "batch").exists() and any((args.work / "batch").iterdir()):
        # `batch` would resume those runs, and finished ones would count as made in no time.
        raise SystemExit(f"{args.work / 'batch'} already holds runs: give --work an empty folder")
    prompts = [p.text for p in load_prompt_set("fidelity-v2").prompts][: args.runs]
    startup = None
    if args.mode == "ray":
        import ray

        start = time.perf_counter()
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        start = time.perf_counter()
        records = generate_many(
            prompts,
            out=work / "batch",
            preset=args.preset,
            steps=args.steps,
            device=args.device,
            guidance="bundled",
            gpus_per_run=args.gpus_per_run,
            cpus_per_run=args.cpus_per_run,
            export_mesh=args.assets,
            turntable=args.assets,
            turntable_from=args.turntable_from,
            parallel=args.mode == "ray",
            progress=True,
            export_task_on_cpu=args.tail == "apart",
        )
        wall = time.perf_counter() - start
    if args.mode == "ray":
        import ray

        slots = ray.cluster_resources()
        ray.shutdown()
    failed = [r for r in records if r["status"] != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {failed[0].get('reason')}")
    at_once = _at_once(args, slots) if args.mode == "ray" else 1
    latency = [r["queued_seconds"] for r in records]
    result = {
        "mode": args.mode,
        "runs": len(records),
        "preset": args.preset,
        "steps": records[0]["steps"],
        "gpus_per_run": args.gpus_per_run,
        "cpus_per_run": args.cpus_per_run,
        "runs_at_once": at_once,
        "assets": args.assets,
        "wall_s": round(wall, 2),
        "runs_per_hour": round(3600 * len(records) / wall, 2),
        "assets_per_hour": round(
            3600 * sum(bool(r.get("mesh") and r.get("video")) for r in records) / wall, 2
        )
        if args.assets
        else None,
        "ray_startup_s": None if startup is None else round(startup, 2),
        "train_s": [r["train_seconds"] for r in records],
        "start_latency_s": latency,
        "first_wave_start_s": round(statistics.median(sorted(latency)[:at_once]), 3),
        "task_overhead_s": [round(r["task_seconds"] - r["train_seconds"], 3) for r in records],
        "tail": args.tail,
        "turntable_from": args.turntable_from,
        "stages": _stages(records) if args.assets else None,
        "commit": git_commit(),
        "machine": machine_info(),
    }
    out = args.out or Path(__file__).parent / "results" / f"batch_throughput_{args.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'mode':12s} {'runs':>5s} {'at once':>8s} {'wall s':>8s} {'runs/h':>8s} {'train s':>8s} "
          f"{'start s':>8s} {'overhead s':>10s} {'ray up s':>8s}")  # fmt: skip
    print(
        f"{args.mode:12s} {len(records):5d} {at_once:8d} {wall:8.1f} {result['runs_per_hour']:8.1f} "
        f"{statistics.median(result['train_s']):8.2f} {result['first_wave_start_s']:8.2f} "
        f"{statistics.median(result['task_overhead_s']):10.2f} "
        f"{'-' if startup is None else f'{startup:.1f}':>8s}"
    )
    if result["stages"]:
        share = result["stages"]["share"]
        print("share of summed run time: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    print(f"written: {out}")


def _stages(records: list[dict]) -> dict:
    """Seconds summed over runs for training, mesh and turntable, and each one's share."""
    totals = {
        "train": sum(r["train_seconds"] for r in records),
        "mesh": sum(r.get("mesh_seconds", 0.0) for r in records),
        "video": sum(r.get("video_seconds", 0.0) for r in records),
    }
    whole = sum(totals.values()) or 1.0
    return {
        "seconds": {k: round(v, 2) for k, v in totals.items()},
        "share": {k: round(v / whole, 3) for k, v in totals.items()},
        "videos": sorted({Path(r["video"]).suffix for r in records if r.get("video")}),
    }


def _at_once(args, total: dict) -> int:
    """Runs the cluster holds at once with these shares (medians of the table are over runs)."""
    gpus = args.gpus_per_run if args.gpus_per_run is not None else (1.0 if total.get("GPU") else 0.0)
    slots = [total.get("CPU", 1) / args.cpus_per_run]
    if gpus:
        slots.append(total.get("GPU", 0) / gpus)
    return max(1, min(args.runs, int(min(slots) + 1e-9)))


if __name__ == "__main__":
    main()
