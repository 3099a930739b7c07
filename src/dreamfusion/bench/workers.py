"""Worker processes for runs that train at once: an equal share of the CPU cores each and, on a
machine with several GPUs, one GPU each.

`worker_pool(jobs, device)` starts `jobs` spawned workers (CUDA cannot be used in a forked
child). Under a plain "cuda" with several GPUs visible, worker k keeps GPU k mod count for all its
runs, so the jobs share the GPUs evenly and no worker holds a CUDA context and caches on two; a
named device ("cuda:1", "cpu") is every worker's. A task reads its worker's device with
`worker_device()`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

import torch

_device: str | None = None
"""This worker's device (set by `init_worker`); None in the main process."""


def worker_threads(jobs: int, cpus: int) -> int:
    """CPU threads for each of `jobs` workers: an equal share of the cores, at least one. Left to
    PyTorch, every worker takes all the cores, and scoring (meshing, Chamfer, resampling) in 16
    workers at once on 16 cores ran 16 x 16 threads and finished nothing in 10 minutes."""
    return max(1, cpus // jobs)


def limit_threads(threads: int) -> None:
    """Cap this process's intra-op threads."""
    torch.set_num_threads(threads)


def run_devices(device: str) -> list[str]:
    """The devices the workers take in turn: every visible GPU for a plain "cuda" on a machine with
    several, else the one device named."""
    count = torch.cuda.device_count() if device == "cuda" else 0
    return [f"cuda:{k}" for k in range(count)] if count > 1 else [device]


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is up (its pipe is where CUDA clients look for it)."""
    folder = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return os.path.exists(os.path.join(folder, "control"))


def sharing_hint(jobs: int, devices: list[str], mps: bool) -> str | None:
    """One line for runs that will share a GPU without MPS, else None. Without MPS, processes on
    one GPU take turns (time slices); with it, their small kernels run side by side: 11 runs at
    once on one H100 trained in 60 s each with MPS against 86 s without (docs/evaluation.md)."""
    if mps or jobs <= len(devices) or not devices[0].startswith("cuda"):
        return None
    return (
        f"note: {jobs} runs will share {len(devices)} GPU(s) by time slices; starting NVIDIA MPS first "
        "(`nvidia-cuda-mps-control -d`) lets them run side by side, about 1.4x faster on an H100"
    )


def init_worker(threads: int, devices) -> None:
    """Worker initializer: cap the threads and take this worker's device from the queue `devices`.
    A named GPU becomes the current one before anything touches CUDA."""
    global _device
    limit_threads(threads)
    _device = devices.get()
    if _device.startswith("cuda:"):
        torch.cuda.set_device(_device)


def worker_device() -> str | None:
    """The device of the worker this runs in; None outside a worker."""
    return _device


def worker_pool(jobs: int, device: str) -> concurrent.futures.ProcessPoolExecutor:
    """`jobs` spawned workers, each with its share of the cores and its device (module docstring)."""
    context = multiprocessing.get_context("spawn")
    devices = run_devices(device)
    queue = context.Queue()
    for k in range(jobs):
        queue.put(devices[k % len(devices)])
    threads = worker_threads(jobs, os.cpu_count() or 1)
    return concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=init_worker, initargs=(threads, queue)
    )
