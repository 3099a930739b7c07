"""What a training run does around its steps, shared by the field's trainer and the prior's.

- the device, checked before anything is built (`resolve_device`);
- Ctrl-C asks the loop to stop after the current step, so it saves before exiting; a second
  Ctrl-C stops at once (`Interrupt`);
- a progress bar, and the run folder's loggers closed however the loop ends (`running`);
- checkpoints: saved every N steps and at the end, the oldest pruned (`save`), and read back by
  `--resume` with one clear line when they do not fit the run (`resume`);
- the wall time of each phase of a step (`StepTimer`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dreamfusion.errors import UserError
from dreamfusion.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_path,
    flatten_optimizer,
    prune_checkpoints,
    save_checkpoint,
    unflatten_optimizer,
)
from dreamfusion.training.run_dir import RunDir


def resolve_device(name: str) -> torch.device:
    """A torch.device ("auto": CUDA when this machine has it, else the CPU), or a UserError when
    CUDA is asked for where there is none."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "CUDA was asked for (--device cuda) but this machine has no usable GPU; use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device '{name}' is not supported; use cpu or cuda")
    return device


class Interrupt:
    """Ctrl-C handling: the first sets `requested` (the loop saves and stops after its step), a
    second raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class Stoppable:
    """A training loop that Ctrl-C (through its `Interrupt`) stops after saving, at the end of a step."""

    interrupt: Interrupt

    @property
    def _stop_requested(self) -> bool:
        """Whether the loop stops (after saving) at the end of this step; Ctrl-C sets it."""
        return self.interrupt.requested

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        self.interrupt.requested = value


@contextlib.contextmanager
def running(
    run: RunDir, interrupt: Interrupt, total: int, initial: int, progress: bool, desc: str
) -> Iterator[tqdm]:
    """The span of a training loop: Ctrl-C goes to `interrupt` (signals reach the main thread only,
    so elsewhere it is left alone) and a progress bar counts steps; on the way out, however the loop
    ends, the bar and the run's loggers close and the previous Ctrl-C handler comes back."""
    previous = signal.getsignal(signal.SIGINT)
    handled = previous is not None and _in_main_thread()
    if handled:
        signal.signal(signal.SIGINT, interrupt)
    bar = tqdm(total=total, initial=initial, disable=not progress, desc=desc, unit="step", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
        run.close()
        if handled:
            signal.signal(signal.SIGINT, previous)


def due(step: int, every: int) -> bool:
    """Whether a periodic action (log, preview, checkpoint) falls at `step` (every <= 0: never)."""
    return every > 0 and step % every == 0


def save(
    run: RunDir,
    step: int,
    prompt: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep: int,
    optimizer: torch.optim.Optimizer | None = None,
    lean: bool = False,
) -> Path:
    """Write RUN/checkpoints/step_N with `tensors` (keys namespaced: 'field.', 'rng.', ...) and, when
    given, the optimizer's state (what resuming needs to continue exactly); then keep the newest
    `keep` checkpoints (keep <= 0: all). `lean` stores the floating-point tensors in half precision
    (checkpoint.narrow): for a checkpoint that no exact resume will read."""
    if optimizer is not None:
        optim_tensors, optim_rest = flatten_optimizer(optimizer.state_dict())
        tensors = {**tensors, **optim_tensors}
        meta = {**meta, "optim": optim_rest}
    path = save_checkpoint(
        checkpoint_path(run.checkpoints, step), step, prompt, config, tensors, meta, lean=lean
    )
    prune_checkpoints(run.checkpoints, keep)
    return path


def resume(run: RunDir, restore: Callable[[Checkpoint], None], what: str) -> Checkpoint:
    """Load the run's newest good checkpoint and hand it to `restore` (which loads it into the live
    modules); then drop the metrics logged after it. A checkpoint that is missing, corrupt or does
    not fit (`what`: "this run's model") is one UserError line."""
    path = run.latest_checkpoint()
    if path is None:
        raise UserError(f"nothing to resume in {run.path}: no checkpoint under checkpoints/")
    try:
        path, ckpt = run.resume_checkpoint()  # the newest that verifies; damaged newer ones are skipped
        restore(ckpt)
    except CheckpointError as e:
        raise UserError(f"cannot resume: {e}") from None
    except (RuntimeError, KeyError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot resume: checkpoint {path} does not match {what} ({first})") from None
    run.truncate_metrics(ckpt.step)
    return ckpt


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> bool:
    """Load the optimizer's state saved in `ckpt`; False (the optimizer left fresh) when it holds
    none, as a finished run's final checkpoint."""
    if "optim" not in ckpt.meta:
        return False
    optimizer.load_state_dict(unflatten_optimizer(ckpt.section("optim"), ckpt.meta["optim"]))
    return True


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}


@dataclass
class StepTimer:
    """Wall time per phase; synchronizes CUDA around phases only when asked (it slows training)."""

    device: torch.device
    sync: bool
    totals: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
