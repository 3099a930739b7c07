"""Checkpoints: one safetensors file per save, written atomically.

Tensors (field, background, optimizer state, random generator states) go in the safetensors body;
the step, the prompt, the resolved config and a SHA-256 of the tensors go in its string metadata.
One file means a save is either complete or absent: it is written under a temporary name and
renamed into place. The checksum catches what renaming cannot: bytes damaged later on the disk or
in a copy, which safetensors itself reads back without complaint. Loading never unpickles anything.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dreamfusion.atomic import atomic_write
from dreamfusion.errors import UserError

log = logging.getLogger("dreamfusion")

FORMAT = "dreamfusion-checkpoint-v1"
_NAME = re.compile(r"^step_(\d{7})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another run."""


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in name order (hex)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


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


def checkpoint_bytes(*modules: torch.nn.Module | None) -> int:
    """About the size of a checkpoint of these modules under Adam: each parameter and its two moments."""
    size = 0
    for module in modules:
        if module is None:
            continue
        size += 3 * sum(p.numel() * p.element_size() for p in module.parameters())
        size += sum(b.numel() * b.element_size() for b in module.buffers())
    return size


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
        "sha256": tensor_checksum(body),
    }
    try:
        atomic_write(path, lambda tmp: save_file(body, str(tmp), metadata=metadata))
    except OSError as e:
        # The temporary file is gone (atomic_write) and the previous checkpoints are untouched.
        why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        kept = list_checkpoints(path.parent)
        last = f"the last complete checkpoint is {kept[-1]}" if kept else "no checkpoint was saved"
        raise UserError(f"cannot write checkpoint {path}: {why}; {last} (resume with --resume)") from None
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
    expected = metadata.get("sha256")
    if expected is None:
        log.debug("checkpoint %s has no checksum (an older format); its tensors are not verified", path)
    elif tensor_checksum(tensors) != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match their checksum")
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


def verified_checkpoints(folder: Path) -> Iterator[tuple[Path, Checkpoint | CheckpointError]]:
    """Each checkpoint of `folder`, newest first, with what loading it gave: the Checkpoint, or the
    CheckpointError saying why it cannot be used. The caller takes the first that loaded."""
    for path in reversed(list_checkpoints(folder)):
        try:
            yield path, load_checkpoint(path)
        except CheckpointError as e:
            yield path, e


def newest_good_checkpoint(folder: Path) -> tuple[Path, Checkpoint, list[tuple[Path, CheckpointError]]]:
    """The newest checkpoint of `folder` that loads and verifies, and the newer ones that did not
    (newest first). CheckpointError (the newest one's) when none does, or there is none."""
    damaged: list[tuple[Path, CheckpointError]] = []
    for path, loaded in verified_checkpoints(folder):
        if isinstance(loaded, Checkpoint):
            return path, loaded, damaged
        damaged.append((path, loaded))
    if damaged:
        raise damaged[0][1]
    raise CheckpointError(f"no checkpoint under {folder}")
