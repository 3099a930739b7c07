"""Whether training is learning anything: steps dropped for a non-finite loss or gradient, and runs
of steps whose SDS gradient is zero or non-finite.

Both are counted on the device at every step (no wait) and read only when the loop asks (when it
logs, and every `stall_steps`): a dropped step is reported once as a warning and training goes
on; a stall of `stall_steps` in a row (a broken model, a guidance scale of 0) stops the run with
one line instead of training nothing to the end.
"""

from __future__ import annotations

import logging

import torch

from dreamfusion.errors import UserError

log = logging.getLogger("dreamfusion")


class Health:
    def __init__(self, device: torch.device, stall_steps: int) -> None:
        self.stall_steps = stall_steps  # 0: never stop
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.reported_skipped = 0
        self.stalled = torch.zeros((), dtype=torch.long, device=device)  # steps in a row
        self._warned_stall = False

    def record(self, skipped: torch.Tensor, sds_grad: torch.Tensor) -> None:
        """One step: `skipped` (bool, its update dropped) and `sds_grad` (its SDS gradient's norm)."""
        self.skipped += skipped.long()
        learned = ~skipped & torch.isfinite(sds_grad) & (sds_grad > 0)
        self.stalled = torch.where(learned, 0, self.stalled + 1)

    def resume(self, skipped: int) -> None:
        """Carry the dropped-step count of the checkpoint (its steps were reported already)."""
        self.reported_skipped = skipped
        self.skipped.fill_(skipped)

    def report_skipped(self, step: int) -> None:
        """Warn once for steps dropped since the last report."""
        skipped = int(self.skipped)
        if skipped > self.reported_skipped:
            log.warning(
                "%d step(s) up to step %d had a non-finite loss or gradient; their updates were skipped",
                skipped - self.reported_skipped,
                step,
            )
            self.reported_skipped = skipped

    def check_stall(self, step: int) -> None:
        """UserError once the SDS gradient has been zero or non-finite for `stall_steps` steps in a
        row; a warning (once) when a fifth of that is reached."""
        if self.stall_steps <= 0:
            return
        stalled = int(self.stalled)
        if stalled >= self.stall_steps:
            raise UserError(
                f"the SDS gradient was zero or non-finite for {stalled} steps in a row (up to step "
                f"{step}): the field learns nothing from the guidance; check --sds.guidance-scale / "
                "the model (--guidance, --model)"
            )
        if stalled >= max(1, self.stall_steps // 5) and not self._warned_stall:
            log.warning(
                "the SDS gradient has been zero or non-finite for %d steps in a row; the run stops at %d",
                stalled,
                self.stall_steps,
            )
            self._warned_stall = True
