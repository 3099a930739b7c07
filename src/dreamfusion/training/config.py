"""The training loop's settings: length, batch, seeds, device, logging and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """The loop: length, batch, seeds, logging and checkpoints."""

    steps: int = 10000
    """Optimizer steps."""
    batch_size: int = 1
    """Views rendered per step."""
    micro_batch: int = 0
    """Views rendered and back-propagated at once (0: the whole batch); bounds memory, same gradient."""
    seed: int = 0
    """Seed of every random draw of the run."""
    device: str = "cpu"
    """cpu or cuda (or cuda:N)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Autocast dtype of the field on CUDA; float32 everywhere on CPU."""
    log_every: int = 10
    """Write a metrics line every N steps."""
    preview_every: int = 500
    """Save a preview image every N steps (0: off)."""
    checkpoint_every: int = 1000
    """Save a checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep while training (0: all); a finished run keeps its final one."""
    stall_steps: int = 50
    """Stop with an error once the SDS gradient has been zero or non-finite this many steps in a row
    (0: never)."""
    progress: bool = True
    """Show a progress bar with loss and ETA."""
    tensorboard: bool = False
    """Also write TensorBoard scalars (needs the tensorboard package)."""
    profile: bool = False
    """Synchronize the device around each phase so the logged timings are exact (slower on CUDA)."""
    preview_resolution: int = 64
    """Width and height of preview renders."""
