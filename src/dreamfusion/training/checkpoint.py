"""Checkpoints: one safetensors file per save, written atomically.

Tensors (field, background, optimizer state, random generator states) go in the safetensors body;
the step, the prompt, the resolved config and a SHA-256 of the tensors go in its string metadata.
One file means a save is either complete or absent: it is written under a temporary name and
renamed into place. The checksum catches what renaming cannot: bytes damaged later on the disk or
in a copy, which safetensors itself reads back without complaint. Loading never unpickles anything.

A lean checkpoint (a finished run's last one) stores its floating-point tensors in half precision
and its boolean ones as bits; the metadata's `stored_as` names each and its own dtype, and loading
gives them back in that dtype, so readers see the same tensors as from a full checkpoint. The
checksum covers the tensors as stored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    stored_as: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What a lean checkpoint stored in a narrower form (`narrow`); `tensors` holds them widened back."""

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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_FLOATS = {_dtype_name(d): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}


def _half_dtype(t: torch.Tensor) -> torch.dtype:
    """float16 keeps three more bits of mantissa than bfloat16 but overflows past 65504, which a
    density reading under the exp activation (the occupancy grid's) can exceed: such a tensor goes
    to bfloat16, which has float32's range."""
    finite = t[torch.isfinite(t)]
    if finite.numel() and finite.abs().max() > torch.finfo(torch.float16).max:
        return torch.bfloat16
    return torch.float16


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool tensor -> uint8 tensor of its bits, 8 to a byte (the last one zero-padded)."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy().reshape(-1)))


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The inverse of `pack_bits`, given the mask's shape; ValueError when the sizes disagree."""
    count = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != (count + 7) // 8:
        raise ValueError(f"{packed.numel()} {packed.dtype} values cannot hold the bits of shape {shape}")
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count).astype(bool)).reshape(shape)


def narrow(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Tensors as a lean checkpoint stores them, and the record `widen` reads them back by:
    floating-point tensors wider than 16 bits in half precision, boolean ones as bits. Integer
    tensors (random generator states, step counters) stay as they are: they must come back exact."""
    stored, record = dict(tensors), {}
    for key, t in tensors.items():
        if t.is_floating_point() and t.element_size() > 2:
            half = _half_dtype(t)
            stored[key] = t.to(half)
            record[key] = {"dtype": _dtype_name(t.dtype), "stored": _dtype_name(half)}
        elif t.dtype == torch.bool:
            stored[key] = pack_bits(t)
            record[key] = {"dtype": "bool", "stored": "bits", "shape": list(t.shape)}
    return stored, record


def widen(stored: dict[str, torch.Tensor], record: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The inverse of `narrow`: each recorded tensor back in its own dtype (and shape, for bits).
    KeyError or ValueError when the record does not fit the tensors."""
    if not isinstance(record, dict):
        raise ValueError(f"stored_as is not a mapping: {record!r}")
    tensors = dict(stored)
    for key, how in record.items():
        t = stored[key]
        if how["stored"] == "bits":
            tensors[key] = unpack_bits(t, how["shape"])
        elif _dtype_name(t.dtype) == how["stored"] and how["dtype"] in _FLOATS:
            tensors[key] = t.to(_FLOATS[how["dtype"]])
        else:
            raise ValueError(f"{key} is {_dtype_name(t.dtype)}, recorded as {how}")
    return tensors


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
    lean: bool = False,
) -> Path:
    """Write a checkpoint atomically. `tensors` keys are namespaced ('field.', 'optim.', ...).
    `lean`: floating-point tensors in half precision and boolean ones as bits (`narrow`)."""
    body = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    stored_as: dict[str, dict[str, Any]] = {}
    if lean:
        body, stored_as = narrow(body)
    metadata = {
        "format": FORMAT,
        "step": str(step),
        "prompt": prompt,
        "config": json.dumps(config, sort_keys=True),
        "meta": json.dumps(meta or {}, sort_keys=True),
        "sha256": tensor_checksum(body),
    }
    if stored_as:
        metadata["stored_as"] = json.dumps(stored_as, sort_keys=True)
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
        stored_as = json.loads(metadata.get("stored_as", "{}"))
        return Checkpoint(
            step=int(metadata["step"]),
            prompt=metadata["prompt"],
            config=json.loads(metadata["config"]),
            tensors=widen(tensors, stored_as),
            meta=json.loads(metadata.get("meta", "{}")),
            stored_as=stored_as,
        )
    except (KeyError, ValueError, TypeError) as e:
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
