"""What one task of a batch does, on whichever node runs it: train a run (resuming what is
there), and export its mesh and turntable. Each returns a record for the manifest and never
raises for a run's own failure (a prompt the model cannot read, CUDA out of memory): it returns
status "failed" with the reason, so that no run stops another and none is retried in vain.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from dreamfusion.config import Config
from dreamfusion.errors import UserError

STATE = ".batch"
"""OUT/STATE holds the batch's own files: the token that proves a node sees OUT, and each
running task's process id (OUT/STATE/<run>.pid)."""
TOKEN = "token"


@dataclass(frozen=True)
class RunJob:
    """Everything a task needs to train one run: plain values, so it travels to any node."""

    prompt: str
    seed: int
    name: str
    out: str
    """The batch folder, absolute: the same path on every node (a shared file system)."""
    token: str
    """The content of OUT/STATE/TOKEN written by the driver; a node that reads another does not see OUT."""
    config: Config
    export_mesh: bool
    turntable: bool
    tail_here: bool
    """Export the mesh and turntable in this task; else the driver gives them a task of their own."""
    turntable_from: str = "mesh"
    """The turntable's source: "mesh" or "field" (`export.assets.write_assets`)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name


def _record(job: RunJob, **fields) -> dict:
    return {"name": job.name, "prompt": job.prompt, "seed": job.seed, "node": socket.gethostname(), **fields}


def _failed(job: RunJob, reason: str) -> dict:
    return _record(job, status="failed", reason=reason)


def check_shared(job: RunJob) -> None:
    """UserError unless this node sees the driver's OUT and can write there."""
    node = socket.gethostname()
    token = Path(job.out) / STATE / TOKEN
    try:
        seen = token.read_text().strip()
    except OSError:
        seen = None
    if seen != job.token:
        raise UserError(
            f"node {node} does not see the batch folder {job.out} (no {token} written by the driver): "
            "the folder must be on a file system every node mounts at the same path"
        )
    probe = Path(job.out) / STATE / f"{job.name}.pid"
    try:
        probe.write_text(f"{os.getpid()}\n")
    except OSError as e:
        raise UserError(f"node {node} cannot write to the batch folder {job.out} ({e.strerror})") from None


def train_task(job: RunJob) -> dict:
    """Train the run to its step count (resuming from its newest checkpoint), then export its mesh
    and turntable here unless the driver gives them a task of their own."""
    import torch

    start = time.perf_counter()
    try:
        check_shared(job)
        record = _train(job)
    except UserError as e:
        return _failed(job, str(e))
    except torch.OutOfMemoryError as e:
        return _failed(job, f"CUDA out of memory ({str(e).splitlines()[0][:200]}); give each run more GPU")
    except Exception as e:  # noqa: BLE001 - the run's own failure: reported, not retried, others go on
        from dreamfusion.batch.pool import one_line

        return _failed(job, one_line(e))
    record["task_seconds"] = round(time.perf_counter() - start, 3)
    return record


def _train(job: RunJob) -> dict:
    from dreamfusion.api import generate
    from dreamfusion.training.run_dir import RunDir

    run = RunDir(job.run_dir)
    latest = run.latest_checkpoint()
    if latest is None and run.config_file.is_file() and run.read_config().get("prompt") == job.prompt:
        # Stopped before its first checkpoint: nothing to resume; its config, metrics and previews
        # would make `generate` refuse the folder, so they go and the run starts again.
        shutil.rmtree(run.path)
    resumed_from = step_of(latest) if latest is not None else None
    result = generate(
        job.prompt,
        config=job.config,
        out=job.run_dir,
        resume=latest is not None,
        progress=False,
        export_mesh=job.export_mesh and job.tail_here,
        turntable=job.turntable and job.tail_here,
        turntable_from=job.turntable_from,
    )
    record = _record(
        job,
        status="done" if job.tail_here or not (job.export_mesh or job.turntable) else "trained",
        steps=result.steps,
        resumed_from=resumed_from,
        train_seconds=round(result.seconds, 3),
        checkpoint=_relative(result.checkpoint, job),
        figures=last_metrics(result.metrics),
    )
    if job.tail_here:
        record.update(mesh=_relative(result.mesh, job), video=_relative(result.video, job))
        record.update(_asset_seconds(result.asset_seconds))
    return record


def export_task(job: RunJob) -> dict:
    """Load the trained run and write its mesh and turntable (at the sizes `generate` would use)."""
    from dreamfusion.export.assets import write_assets
    from dreamfusion.training.loading import load_run

    start = time.perf_counter()
    try:
        run = load_run(job.run_dir, "cpu")
        mesh, video = job.export_mesh, job.turntable
        assets = write_assets(
            job.run_dir, run.field, run.background, run.config, mesh, video, job.turntable_from
        )
    except Exception as e:  # noqa: BLE001 - the run is trained; only its assets failed
        from dreamfusion.batch.pool import one_line

        return _failed(job, f"export: {one_line(e)}")
    return {
        "status": "done",
        "mesh": _relative(assets.mesh, job),
        "video": _relative(assets.video, job),
        "export_node": socket.gethostname(),
        "export_seconds": round(time.perf_counter() - start, 3),
        **_asset_seconds(assets.seconds),
    }


def _asset_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """{"mesh": s, "video": s} -> the manifest's mesh_seconds and video_seconds."""
    return {f"{name}_seconds": round(value, 3) for name, value in seconds.items()}


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.stem.split("_")[1])  # step_0001000.safetensors


def last_metrics(path: Path) -> dict | None:
    """The last whole line of a run's metrics.jsonl: the final figures it logged."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue  # a line cut short by an interruption
    return None


def _relative(path: Path | None, job: RunJob) -> str | None:
    return None if path is None else str(Path(path).relative_to(job.out))
