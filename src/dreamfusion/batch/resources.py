"""What each task asks of the cluster, and the one line printed when runs will share a GPU."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from dreamfusion.errors import UserError


@dataclass(frozen=True)
class Resources:
    """A task's share of a node: GPUs (a fraction lets several runs share one) and CPU cores."""

    gpus: float
    cpus: float

    @property
    def threads(self) -> int:
        """PyTorch intra-op threads of a task: its whole cores, at least one. Left to PyTorch,
        every task on a node takes all its cores, and many tasks at once then run cores x tasks
        threads that slow every one of them."""
        return max(1, math.floor(self.cpus))


def run_resources(
    device: str, gpus_per_run: float | None, cpus_per_run: float | None, gpus_total: float, cpus_total: float
) -> Resources:
    """Each run's resources: by default one GPU when runs train on CUDA, else none, and one core.
    UserError when the request cannot be met by this cluster (a task asking for more than there is
    would wait forever)."""
    on_cuda = device.split(":")[0] == "cuda"
    if on_cuda and ":" in device:
        raise UserError(
            f"--device {device} names one GPU; use --device cuda: each run is given its GPU "
            "(--gpus-per-run) by the scheduler"
        )
    gpus = (1.0 if on_cuda else 0.0) if gpus_per_run is None else float(gpus_per_run)
    cpus = 1.0 if cpus_per_run is None else float(cpus_per_run)
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise UserError(f"--gpus-per-run must be a fraction up to 1 or a whole number (got {gpus_per_run})")
    if cpus <= 0:
        raise UserError(f"--cpus-per-run must be positive (got {cpus_per_run})")
    if on_cuda and gpus == 0:
        raise UserError("--device cuda needs a GPU for each run: give --gpus-per-run above 0")
    if gpus > gpus_total:
        found = f"{gpus_total:g} GPU(s)" if gpus_total else "no GPU"
        raise UserError(f"each run asks for {gpus:g} GPU(s) but the cluster has {found}; use --device cpu")
    if cpus > cpus_total:
        raise UserError(f"each run asks for {cpus:g} CPU cores but the cluster has {cpus_total:g}")
    return Resources(gpus, cpus)


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is up (its pipe is where CUDA clients look for it)."""
    folder = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return os.path.exists(os.path.join(folder, "control"))


def sharing_hint(gpus_per_run: float, mps: bool) -> str | None:
    """One line for runs that will share a GPU without MPS, else None. Without MPS, processes on
    one GPU take turns (time slices); with it, their small kernels run side by side, so each run
    trains faster (docs/evaluation.md)."""
    if mps or not 0 < gpus_per_run < 1:
        return None
    return (
        f"note: up to {math.floor(1 / gpus_per_run)} runs will share each GPU by time slices; starting "
        "NVIDIA MPS first (`nvidia-cuda-mps-control -d`) lets them run side by side, about 1.4x faster "
        "on an H100"
    )
