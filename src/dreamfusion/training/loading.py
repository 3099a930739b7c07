"""Load a trained run back into live modules: the entry point of export, render and view."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dreamfusion.config import Config, from_dict
from dreamfusion.errors import UserError
from dreamfusion.fields import build_background, build_field
from dreamfusion.training.checkpoint import CheckpointError, load_checkpoint, newest_good_checkpoint
from dreamfusion.training.run_dir import RunDir


@dataclass
class LoadedRun:
    """A run's prompt, config and trained modules (in eval mode, on the requested device)."""

    prompt: str
    config: Config
    field: torch.nn.Module
    background: torch.nn.Module
    checkpoint_path: Path
    step: int
    train_seconds: float
    """Training time up to this checkpoint (the checkpoint's elapsed_s; NaN if it has none)."""

    @property
    def run_dir(self) -> Path:
        """The run folder (the checkpoint lies in RUN/checkpoints/)."""
        return self.checkpoint_path.parent.parent


def find_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run folder, or the file itself when given a checkpoint.

    Raises UserError (one line) when there is none, before anything is read or written.
    """
    path = Path(run_dir)
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if not path.exists():
        raise UserError(
            f"run folder {path} does not exist; pass the --out folder of a `dreamfusion generate` run"
        )
    if not path.is_dir():
        raise UserError(
            f"{path} is not a run folder (a folder with checkpoints/ inside) nor a .safetensors file"
        )
    latest = RunDir(path).latest_checkpoint()
    if latest is None:
        raise UserError(
            f"no checkpoint in {path / 'checkpoints'}; "
            f"train first with `dreamfusion generate PROMPT --out {path}`"
        )
    return latest


def _older_good(run_dir: Path, damaged: Path) -> str:
    """'; ... pass PATH' naming the newest checkpoint of the run that verifies, if any."""
    if not run_dir.is_dir():
        return ""
    try:
        good, _, _ = newest_good_checkpoint(damaged.parent)
    except CheckpointError:
        return ""
    return f"; to use the newest good one, pass {good}"


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the field and background of a run from its newest checkpoint.

    The config comes from the checkpoint's own metadata (the one the tensors were trained with),
    so a hand-edited config.json cannot mismatch the weights.
    """
    path = find_checkpoint(run_dir)
    try:
        ckpt = load_checkpoint(path)
        config = from_dict(ckpt.config)
    except CheckpointError as e:
        raise UserError(f"{e}{_older_good(Path(run_dir), path)}") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"checkpoint {path} holds a config this version cannot read ({e})") from None
    field = build_field(config.field)
    background = build_background(config.background)
    try:
        field.load_state_dict(ckpt.section("field"))
        background.load_state_dict(ckpt.section("background"))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint {path} does not match its own config ({first})") from None
    return LoadedRun(
        prompt=ckpt.prompt,
        config=config,
        field=field.to(device).eval(),
        background=background.to(device).eval(),
        checkpoint_path=path,
        step=ckpt.step,
        train_seconds=float(ckpt.meta.get("elapsed_s", float("nan"))),
    )
