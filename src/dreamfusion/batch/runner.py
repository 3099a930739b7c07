"""generate_many: many prompts at many seeds, each an ordinary run folder under OUT.

The driver plans the runs, starts (or joins) the pool, and submits one training task per run
not finished yet; each run makes its mesh and turntable in its own task, on its GPU share (or, when
asked, in a task of its own on CPU cores: `export_task`). OUT/batch.json is rewritten as
each run finishes. Ctrl-C cancels the tasks and writes the manifest; the same call again skips
the finished runs and resumes the others from their newest checkpoints.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dreamfusion.batch.manifest import Manifest
from dreamfusion.batch.pool import open_pool
from dreamfusion.batch.prompts import RunSpec, check_prompts, plan_runs
from dreamfusion.batch.resources import Resources, mps_running, run_resources, sharing_hint
from dreamfusion.batch.task import STATE, TOKEN, RunJob, export_task, train_task
from dreamfusion.config import Config
from dreamfusion.errors import UserError


def batch_config(
    preset: str = "auto",
    steps: int | None = None,
    guidance: str | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: Config | None = None,
) -> Config:
    """The config every run of the batch shares (each then takes its own seed). UserError on bad input."""
    from dreamfusion.api import auto_preset, resolve_config
    from dreamfusion.config import apply_overrides, validate_config

    if config is None and preset == "auto":
        preset, device = auto_preset(device)
    cfg = resolve_config(preset, steps, None, guidance, device, config)
    cfg = apply_overrides(cfg, dict(overrides or {}))
    validate_config(cfg)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))


def generate_many(
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    out: str | Path = "outputs/batch",
    preset: str = "auto",
    *,
    steps: int | None = None,
    guidance: str | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: Config | None = None,
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: float | None = 1,
    export_mesh: bool = True,
    turntable: bool = True,
    turntable_from: str = "mesh",
    export_task_on_cpu: bool = False,
    max_retries: int = 3,
    parallel: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train every prompt at every seed into OUT/<slug>-s<seed>; returns the runs' manifest
    records (status "done" or "failed" with its reason; "pending" after Ctrl-C), in prompt order.

    `address`: join that Ray cluster ("auto", "HOST:PORT"); None starts a local one for the call
    (without Ray installed, or with `parallel=False`, the runs go one after another here).
    `config` (else `preset`, `steps`, `guidance`, `device`) plus `overrides` (dotted settings
    such as {"sds.guidance_scale": 20}, as `generate` takes them) is every run's config.
    `export_task_on_cpu` makes each run's mesh and turntable a task of their own on `cpus_per_run`
    cores, at the sizes of the device the run trained on. Off by default: the mesh's density grid,
    its texture and the turntable's frames are field queries, minutes per asset on a CPU and
    seconds on a GPU, while the export's CPU-bound part (the UV unwrap, the video encoding) takes a
    few seconds, during which runs sharing the GPU go on training.
    Raises UserError on bad input, before anything is written.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    runs = plan_runs(check_prompts(list(prompts)), list(seeds), out)
    from dreamfusion.export.turntable import check_turntable_from

    check_turntable_from(turntable_from)
    batch_config(preset, steps, guidance, device or "cpu", overrides, config)  # bad input: before any start
    if max_retries < 0:
        raise UserError(f"max_retries must be non-negative (got {max_retries})")
    pool = open_pool(address, parallel, max_retries, log)
    try:
        if device is None:
            device = "cuda" if pool.gpus > 0 else "cpu"
        cfg = batch_config(preset, steps, guidance, device, overrides, config)
        resources = run_resources(cfg.train.device, gpus_per_run, cpus_per_run, pool.gpus, pool.cpus)
        if pool.parallel:
            hint = sharing_hint(resources.gpus, mps_running())
            if hint:
                log(hint)
        tail_apart = export_task_on_cpu and (export_mesh or turntable)
        assets = (export_mesh, turntable, turntable_from, tail_apart)
        return _run(runs, cfg, out, pool, resources, assets, progress, log)
    finally:
        pool.close()


def _run(runs: list[RunSpec], cfg: Config, out: Path, pool, resources, assets, progress, log) -> list[dict]:
    from tqdm import tqdm

    export_mesh, turntable, turntable_from, tail_apart = assets
    manifest = Manifest(out, runs)
    todo = [run for run in runs if not manifest.finished(run, cfg.train.steps)]
    token = secrets.token_hex(8)
    (out / STATE).mkdir(parents=True, exist_ok=True)
    (out / STATE / TOKEN).write_text(token + "\n")
    jobs = {
        run.name: RunJob(
            prompt=run.prompt,
            seed=run.seed,
            name=run.name,
            out=str(out),
            token=token,
            config=dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=run.seed)),
            export_mesh=export_mesh,
            turntable=turntable,
            tail_here=not tail_apart,
            turntable_from=turntable_from,
        )
        for run in todo
    }
    for name, job in jobs.items():
        manifest.update(name, {"status": "pending"})
        pool.submit(("train", name), train_task, job, resources=resources)
    manifest.write()
    skipped = len(runs) - len(todo)
    if skipped:
        log(f"batch: {skipped} of {len(runs)} runs already done in {out}; {len(todo)} to go")
    bar = tqdm(total=len(runs), initial=skipped, unit="run", desc="batch", disable=not progress)
    tail = Resources(gpus=0.0, cpus=resources.cpus)
    try:
        while pool.pending():
            (kind, name), record, error = pool.wait()
            if error is not None:  # the worker died more often than retried, or was cancelled
                from dreamfusion.batch.pool import one_line

                record = {"status": "failed", "reason": one_line(error)}
            elif kind == "train":  # waiting for a free slot, plus starting the task on a worker
                record["queued_seconds"] = round(pool.latencies[-1], 3)
            manifest.update(name, record)
            status = manifest.records[name]["status"]
            if status == "trained":
                pool.submit(("export", name), export_task, jobs[name], resources=tail)
            else:
                bar.update(1)
                if status == "failed":
                    run = manifest.records[name]
                    bar.write(f"FAILED {run['prompt']!r} (seed {run['seed']}): {run['reason']}")
            manifest.write()
    except KeyboardInterrupt:
        pool.cancel()
        for record in manifest.records.values():
            if record.get("status") not in ("done", "failed", "trained"):
                record["status"] = "pending"
        manifest.write()
        counts = manifest.counts()
        bar.close()
        log(
            f"batch stopped: {counts['done']} done, {counts['pending']} unfinished; run the same "
            "command again to go on from their last checkpoints"
        )
        raise
    bar.close()
    return [manifest.records[run.name] for run in runs]


def summary(records: list[dict], out: Path) -> str:
    """One line: how many runs finished and failed, and where the manifest is."""
    done = sum(r.get("status") == "done" for r in records)
    failed = [r for r in records if r.get("status") == "failed"]
    line = f"batch: {done} of {len(records)} runs done in {out}"
    if failed:
        line += f", {len(failed)} failed (reasons in {out / 'batch.json'})"
    return line
