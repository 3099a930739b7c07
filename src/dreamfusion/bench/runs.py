"""One benchmark run: train it (or resume it), then score it against the world (or read its score back).

Resumable at every level: a run whose newest checkpoint reached the step count is scored without
training; a run cut off mid-training resumes from its checkpoint; a run already scored at its
newest checkpoint with the same settings is read back from RUN/fidelity_score.json. Once a run
is scored only its newest checkpoint is kept (unless `keep_checkpoints`); a finished, scored run
whose checkpoints were deleted (results carried to another machine without them) is read back too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dreamfusion.atomic import atomic_write
from dreamfusion.bench.names import run_folder
from dreamfusion.config import Config, to_dict
from dreamfusion.errors import UserError
from dreamfusion.training.checkpoint import checkpoint_path, prune_checkpoints
from dreamfusion.training.run_dir import RESUMABLE_CHANGES, RunDir, flat_diff

if TYPE_CHECKING:
    from dreamfusion.bench.runner import BenchOptions, BenchRun

SCORE_FILE = "fidelity_score.json"
"""RUN/SCORE_FILE caches a run's record, keyed by the checkpoint and settings it was scored with."""
FRAMES_FILE = "fidelity_frames.png"
"""RUN/FRAMES_FILE: the run's row of the contact sheet (result views, then the truth's)."""


def run_config(run: BenchRun, options: BenchOptions) -> Config:
    """The run's config: the benchmark's, under the run's seed, keeping every checkpoint."""
    train = dataclasses.replace(options.config.train, seed=run.seed, keep_checkpoints=0)
    return dataclasses.replace(options.config, train=train)


def bench_run(run: BenchRun, options: BenchOptions) -> dict:
    """Train what is missing of one run, then score it (or read its score back)."""
    run_dir = run_folder(options.out, run)
    start = time.perf_counter()
    trained = train_run(run, run_config(run, options), run_dir)
    wall = time.perf_counter() - start if trained else None
    record = score_run(run, options, run_dir)
    record.update(
        name=run.name,
        seed=run.seed,
        run_dir=str(run_dir.relative_to(options.out)),
        trained_now=trained,
        wall_seconds=wall,
    )
    return record


def train_run(run: BenchRun, cfg: Config, run_dir: Path) -> bool:
    """Train the run up to `cfg.train.steps`, resuming what is there; False when it was finished."""
    import dreamfusion

    folder = RunDir(run_dir)
    latest = folder.latest_checkpoint()
    if folder.config_file.is_file():
        saved = folder.read_config()
        if saved.get("prompt") != run.prompt.text:
            raise UserError(f"{run_dir} holds a run of {saved.get('prompt')!r}; choose another --out")
        changed = [
            k
            for k in flat_diff(
                saved.get("config", {}),
                json.loads(json.dumps(to_dict(cfg))),
                defaults=json.loads(json.dumps(to_dict(Config()))),
            )
            if k not in RESUMABLE_CHANGES
        ]
        if changed:
            raise UserError(
                f"{run_dir} holds a run with other settings ({', '.join(changed)}); "
                "use the same preset and overrides, or another --out"
            )
        if latest is None and _final_score_kept(run_dir, cfg.train.steps):
            return False  # finished and scored, then its checkpoints were deleted: read back
        if latest is None:  # cut off before its first checkpoint: nothing to resume
            shutil.rmtree(run_dir)
    elif latest is not None:
        raise UserError(f"{run_dir} has checkpoints but no config.json; choose another --out")
    if latest is not None and _step_of(latest) >= cfg.train.steps:
        return False
    dreamfusion.generate(
        run.prompt.text,
        config=cfg,
        out=run_dir,
        resume=latest is not None,
        export_mesh=False,
        turntable=False,
    )
    return True


def _saved_score(run_dir: Path) -> dict | None:
    """RUN/SCORE_FILE ({"key": ..., "record": ...}), or None when it is missing or unreadable."""
    try:
        saved = json.loads((run_dir / SCORE_FILE).read_text())
    except (OSError, ValueError):
        return None
    whole = isinstance(saved, dict) and isinstance(saved.get("key"), dict) and "record" in saved
    return saved if whole else None


def _final_score_kept(run_dir: Path, steps: int) -> bool:
    """Whether RUN/SCORE_FILE holds a score of the run's final checkpoint."""
    saved = _saved_score(run_dir)
    return saved is not None and saved["key"].get("checkpoint") == checkpoint_path(Path(), steps).name


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.stem.split("_")[1])  # step_0001000.safetensors


def score_run(run: BenchRun, options: BenchOptions, run_dir: Path) -> dict:
    """evaluate_run, the time-to-quality curve and the contact-sheet frames of one trained run,
    read back from RUN/SCORE_FILE when it already scored this checkpoint with these settings."""
    from dreamfusion.bench.contact_sheet import render_row, row_size

    latest = RunDir(run_dir).latest_checkpoint()
    final = checkpoint_path(Path(), options.config.train.steps).name  # a run here has finished
    key = {
        "checkpoint": latest.name if latest else final,
        "object": run.prompt.object,
        "color": run.prompt.color,
        "resolution": options.resolution,
        "mesh": options.mesh,
    }
    cache, frames = run_dir / SCORE_FILE, run_dir / FRAMES_FILE
    saved = _saved_score(run_dir)
    record = saved["record"] if saved is not None and saved["key"] == key else None
    scored = record is None
    if latest is None and (scored or row_size(frames) != options.frame_size):
        raise UserError(
            f"{run_dir} has no checkpoint left and no score or frames for these settings; "
            "delete it to train it again, or use the settings it was scored with"
        )
    if scored:
        record = _score(run, options, run_dir)
        text = json.dumps({"key": key, "record": record}, indent=1)
        atomic_write(cache, lambda tmp: tmp.write_text(text))
    if row_size(frames) != options.frame_size:
        device = options.config.train.device
        render_row(run_dir, run.prompt.object, run.prompt.color, options.frame_size, frames, device)
    if not options.keep_checkpoints:
        prune_checkpoints(run_dir / "checkpoints", 1)
    return {**record, "scored_now": scored, "frames": str(frames.relative_to(options.out))}


def _score(run: BenchRun, options: BenchOptions, run_dir: Path) -> dict:
    from dreamfusion.eval.fidelity import evaluate_run, quality_curve

    device = options.config.train.device
    p = run.prompt
    metrics = evaluate_run(run_dir, p.object, p.color, device, options.resolution, mesh=options.mesh)
    metrics.setdefault("chamfer", None)  # the key is there with --no-mesh too
    metrics["curve"] = quality_curve(run_dir, p.object, device, options.resolution, metrics)
    return _finite(metrics)


def _finite(value):
    """NaN and infinities -> None, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
