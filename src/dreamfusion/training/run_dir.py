"""The run folder: resolved config, checkpoints, previews and the metrics log.

RUN/config.json             prompt + resolved config (written once, atomically)
RUN/checkpoints/step_*.safetensors
RUN/previews/step_*.png     orbit renders (albedo row, lit row)
RUN/metrics.jsonl           one JSON object per logged step
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreamfusion import __version__
from dreamfusion.atomic import atomic_write
from dreamfusion.errors import UserError
from dreamfusion.training.checkpoint import list_checkpoints

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
    ) -> None:
        """Check the folder can take this run. Raises UserError; touches nothing.

        `defaults` (the config's default values) lets a run saved before a setting existed resume,
        as long as this run keeps that setting at its default."""
        config = json.loads(json.dumps(config))  # tuples -> lists, as saved
        defaults = json.loads(json.dumps(defaults)) if defaults is not None else None
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output path {self.path} is a file; pass --out with a folder")
        if resume:
            if not self.config_file.is_file():
                raise UserError(f"nothing to resume in {self.path}: it has no config.json; drop --resume")
            saved = self.read_config()
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
        elif _holds_run(self.path):
            if self.config_file.is_file() and self.read_config().get("prompt") == prompt:
                hint = "pass --resume to continue it, or choose another --out"
            else:
                hint = "choose another --out (nothing was overwritten)"
            raise UserError(f"output folder {self.path} already holds a run; {hint}")

    def write_config(self, prompt: str, config: dict[str, Any]) -> None:
        """Record the prompt and resolved config (after `prepare` accepted them)."""
        self.path.mkdir(parents=True, exist_ok=True)
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
