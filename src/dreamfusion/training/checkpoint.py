"""Checkpoints: one safetensors file per save, written atomically.

Tensors (field, background, optimizer state, random generator states) go in the safetensors body;
the step, the prompt and the resolved config go in its string metadata. One file means a save is
either complete or absent: it is written under a temporary name and renamed into place.
Loading never unpickles anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dreamfusion.atomic import atomic_write

FORMAT = "dreamfusion-checkpoint-v1"
_NAME = re.compile(r"^step_(\d{7})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another run."""


@dataclass
class Checkpoint:
    step: int
    prompt: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix.` with the prefix removed (e.g. a module's state dict)."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:07d}.safetensors"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors keyed 'optim.<param>.<name>', JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "scalars": {}}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                rest["scalars"][f"{index}.{name}"] = value
    return tensors, rest


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in rest.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    path: Path,
    step: int,
    prompt: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. `tensors` keys are namespaced ('field.', 'optim.', ...)."""
    body = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "step": str(step),
        "prompt": prompt,
        "config": json.dumps(config, sort_keys=True),
        "meta": json.dumps(meta or {}, sort_keys=True),
    }
    atomic_write(path, lambda tmp: save_file(body, str(tmp), metadata=metadata))
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; raises CheckpointError with one readable line on any problem."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dreamfusion checkpoint (format {metadata.get('format')!r})")
    try:
        return Checkpoint(
            step=int(metadata["step"]),
            prompt=metadata["prompt"],
            config=json.loads(metadata["config"]),
            tensors=tensors,
            meta=json.loads(metadata.get("meta", "{}")),
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has damaged metadata ({e})") from None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
