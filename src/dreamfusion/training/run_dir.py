"""The run folder: resolved config, checkpoints, previews and the metrics log.

RUN/config.json             prompt + resolved config (written once, atomically)
RUN/checkpoints/step_*.safetensors
RUN/previews/step_*.png     orbit renders (albedo row, lit row)
RUN/metrics.jsonl           one JSON object per logged step
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreamfusion import __version__
from dreamfusion.atomic import atomic_write
from dreamfusion.errors import UserError
from dreamfusion.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    newest_good_checkpoint,
)

# Fields that may change between an interrupted run and its resumption. None alters the optimization,
# so the resumed result equals the uninterrupted one; train.steps extends (or shortens) a run, which
# with a cosine schedule bends the learning rate from the resumed step on.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.device",
    "train.progress",
    "train.log_every",
    "train.preview_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.profile",
    "train.stall_steps",
}


def slugify(prompt: str, limit: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:limit].rstrip("-") or "run"


def default_run_dir(prompt: str, root: Path = Path("outputs"), resume: bool = False) -> Path:
    """outputs/<slug>; a fresh run never reuses a folder that holds another run (adds -2, -3...)."""
    base = root / slugify(prompt)
    if resume or not _holds_run(base):
        return base
    n = 2
    while _holds_run(root / f"{base.name}-{n}"):
        n += 1
    return root / f"{base.name}-{n}"


def _holds_run(folder: Path) -> bool:
    return folder.exists() and any(folder.iterdir())


RUN_ENTRIES = {"config.json", "checkpoints", "previews", "metrics.jsonl", "tensorboard"}
"""What a run writes before its end (the mesh and turntable come after the last checkpoint)."""
FEW_CHECKPOINTS = 3
"""A run must find room for this many checkpoints before it starts (one being written, two kept)."""


def _existing_ancestor(path: Path) -> Path:
    """`path` itself or the nearest of its parents that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def flat_diff(
    a: dict[str, Any], b: dict[str, Any], prefix: str = "", defaults: dict[str, Any] | None = None
) -> list[str]:
    """Dotted keys whose values differ between two nested dicts.

    With `defaults` (nested like `b`), a key that `a` lacks (a setting added after `a` was saved)
    counts as changed only if `b` holds something other than its default.
    """
    keys = set(a) | set(b)
    out = []
    for key in sorted(keys):
        vb = b.get(key)
        default = defaults.get(key) if isinstance(defaults, dict) else None
        va = a.get(key, default)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += flat_diff(va, vb, name + ".", default if isinstance(default, dict) else None)
        elif va != vb:
            out.append(name)
    return out


@dataclass
class RunDir:
    path: Path
    _tensorboard: Any = None
    _fresh_in_place: bool = False
    _damaged: list[Path] = dataclasses.field(default_factory=list)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def previews(self) -> Path:
        return self.path / "previews"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.checkpoints)
        return found[-1] if found else None

    def prepare(
        self, prompt: str, config: dict[str, Any], resume: bool, defaults: dict[str, Any] | None = None
    ) -> bool:
        """Check the folder can take this run. Raises UserError; touches nothing. Returns whether
        there is a checkpoint to resume from (False: the run starts from step 0, in place).

        A folder holding no checkpoint (a start that failed before its first save) starts afresh,
        with or without `resume`. With `resume`, the prompt and config to compare come from
        config.json, or from the newest good checkpoint's own metadata when config.json is gone.
        `defaults` (the config's default values) lets a run saved before a setting existed resume,
        as long as this run keeps that setting at its default."""
        config = json.loads(json.dumps(config))  # tuples -> lists, as saved
        defaults = json.loads(json.dumps(defaults)) if defaults is not None else None
        self._check_writable()
        has_checkpoint = self.latest_checkpoint() is not None
        if not has_checkpoint:
            self._check_no_strangers()
            if resume:
                print(f"resume:      nothing to resume in {self.path} (no checkpoint); starting from step 0")
            self._fresh_in_place = _holds_run(self.path)
            return False
        if resume:
            saved = self._saved_record()
            if saved.get("prompt") != prompt:
                raise UserError(
                    f"{self.path} holds a run of the prompt {saved.get('prompt')!r}, not {prompt!r}; "
                    "pass the same prompt to resume, or another --out"
                )
            changed = [
                k
                for k in flat_diff(saved.get("config", {}), config, defaults=defaults)
                if k not in RESUMABLE_CHANGES
            ]
            if changed:
                raise UserError(
                    f"cannot resume {self.path}: these settings differ from the saved run: "
                    f"{', '.join(changed)}"
                )
            return True
        if self.config_file.is_file() and self.read_config().get("prompt") == prompt:
            hint = "pass --resume to continue it, or choose another --out"
        else:
            hint = "choose another --out (nothing was overwritten)"
        raise UserError(f"output folder {self.path} already holds a run; {hint}")

    def _check_writable(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output path {self.path} is a file; pass --out with a folder")
        base = _existing_ancestor(self.path)
        if not base.is_dir():
            raise UserError(f"cannot make the folder {self.path}: {base} is a file; choose another --out")
        if not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"cannot write in {base} (read-only or not yours); choose another --out")

    def _check_no_strangers(self) -> None:
        """UserError when the folder holds files that no run wrote (they would be mixed with the run's)."""
        if not self.path.is_dir():
            return
        strangers = sorted(p.name for p in self.path.iterdir() if p.name not in RUN_ENTRIES)
        strangers = [name for name in strangers if not name.startswith(".")]  # temporaries of atomic writes
        if strangers:
            raise UserError(
                f"{self.path} is not empty and holds no run ({len(strangers)} "
                f"{'entry' if len(strangers) == 1 else 'entries'}, e.g. {strangers[0]}): choose another --out"
            )

    def check_space(self, checkpoint_bytes: int) -> None:
        """UserError when the disk under the folder has no room for a few checkpoints of this size."""
        need = FEW_CHECKPOINTS * checkpoint_bytes
        free = shutil.disk_usage(_existing_ancestor(self.path)).free
        if free < need:
            raise UserError(
                f"only {_size(free)} free under {self.path}; this run needs about {_size(need)} for "
                f"{FEW_CHECKPOINTS} checkpoints of {_size(checkpoint_bytes)}: free some space or choose "
                "another --out"
            )

    def _saved_record(self) -> dict[str, Any]:
        """The prompt and config of the run in the folder: config.json, else the newest good checkpoint's."""
        if self.config_file.is_file():
            try:
                return json.loads(self.config_file.read_text())
            except (OSError, json.JSONDecodeError):
                pass  # rebuilt from the checkpoint, as if it were missing
        try:
            _, ckpt, _ = newest_good_checkpoint(self.checkpoints)
        except CheckpointError as e:
            raise UserError(f"cannot resume: {e}") from None
        print(f"resume:      {self.config_file} is missing or unreadable; using the checkpoint's own config")
        return {"prompt": ckpt.prompt, "config": ckpt.config}

    def resume_checkpoint(self) -> tuple[Path, Checkpoint]:
        """The newest checkpoint that loads and verifies, saying which step it is and which newer
        ones were passed over. CheckpointError when none does. The passed-over files are renamed
        to *.damaged by `write_config`, once the run is known to start (a checkpoint that stayed
        among the newest could make pruning delete the good ones)."""
        path, ckpt, damaged = newest_good_checkpoint(self.checkpoints)
        for bad, error in damaged:
            print(f"resume:      skipping {bad.name}: {error}")
        print(f"resume:      from step {ckpt.step} ({path.name})")
        self._damaged = [bad for bad, _ in damaged]
        return path, ckpt

    def write_config(self, prompt: str, config: dict[str, Any]) -> None:
        """Record the prompt and resolved config (after `prepare` accepted them). A run starting
        afresh in place drops the metrics of the failed start; damaged checkpoints passed over on
        resume are set aside."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self._fresh_in_place:
            self.truncate_metrics(0)
        for bad in self._damaged:
            bad.replace(bad.with_name(bad.name + ".damaged"))
        record = {"prompt": prompt, "config": config, "version": __version__}
        text = json.dumps(record, indent=2, sort_keys=True)
        atomic_write(self.config_file, lambda tmp: tmp.write_text(text))

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.config_file} is unreadable ({e}); choose another --out") from None

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after `step` (they belong to the interrupted tail of a run)."""
        if not self.metrics_file.is_file():
            return
        kept = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by the interruption
        text = "".join(line + "\n" for line in kept)
        atomic_write(self.metrics_file, lambda tmp: tmp.write_text(text))

    def log_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tensorboard.add_scalar(key, value, record["step"])

    @staticmethod
    def check_tensorboard() -> None:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UserError(
                'TensorBoard logging needs the tensorboard package: pip install "dreamfusion[tensorboard]"'
            )

    def open_tensorboard(self) -> None:
        """Also send numeric metrics to TensorBoard event files under RUN/tensorboard."""
        from torch.utils.tensorboard import SummaryWriter

        self._tensorboard = SummaryWriter(str(self.path / "tensorboard"))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def save_image_grid(path: Path, rows: list[torch.Tensor]) -> Path:
    """Save rows of images (each (N, 3, H, W) in [0, 1]) as one PNG, atomically."""
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # (3, rows*H, N*W)
    array = (grid.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
    return path
