"""Where a batch's tasks run: on a Ray cluster, or in this process one after another.

Both pools take `submit(key, fn, *args, resources=...)` and hand back finished tasks with
`wait()` as `(key, result, error)`. `fn` is a module-level function (a Ray worker imports it by
name, so the package must be installed on every node). A Ray task whose worker dies (the process
killed, its node lost) is run again up to `max_retries` times; an exception raised by `fn` is
never retried: it is handed back as the task's error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from dreamfusion.batch.resources import Resources
from dreamfusion.errors import UserError

RAY_HINT = 'runs go one after another; for several at once, or a cluster: pip install "dreamfusion[cluster]"'


def one_line(error: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    line = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return line[:400]


class InProcessPool:
    """Tasks run in this process, in the order submitted, when `wait` asks for the next one."""

    parallel = False
    start_seconds = 0.0

    def __init__(self) -> None:
        import torch

        self.gpus = float(torch.cuda.device_count())
        self.cpus = float(os.cpu_count() or 1)
        self._queue: list[tuple[Any, Callable, tuple, float]] = []
        self.latencies: list[float] = []
        """Seconds from each finished task's submission to its start, in the order they finished."""

    def submit(self, key, fn: Callable, *args, resources: Resources) -> None:
        self._queue.append((key, fn, args, time.time()))

    def pending(self) -> int:
        return len(self._queue)

    def wait(self) -> tuple[Any, Any, BaseException | None]:
        key, fn, args, submitted = self._queue.pop(0)
        self.latencies.append(time.time() - submitted)
        try:
            return key, fn(*args), None
        except Exception as error:  # noqa: BLE001 - handed back: one task's failure stops no other
            return key, None, error

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        pass


def _call(fn: Callable, threads: int, *args) -> dict:
    """The body of every Ray task: cap this worker's threads, run `fn`, and say when it started."""
    import torch

    started = time.time()
    torch.set_num_threads(threads)
    return {"started": started, "result": fn(*args)}


class RayPool:
    """Tasks on a Ray cluster: joined at `address` ("auto", "HOST:PORT"), else a local instance
    started here and stopped by `close`. A Ray already initialized in this process is used as it is."""

    parallel = True

    def __init__(self, address: str | None, max_retries: int = 3) -> None:
        import ray

        self._ray = ray
        self.max_retries = max_retries
        self._own = False
        start = time.perf_counter()
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"at {address}" if address else "locally"
                raise UserError(f"cannot start or join a Ray cluster {where} ({one_line(e)})") from None
            self._own = True
        self.start_seconds = time.perf_counter() - start
        total = ray.cluster_resources()
        self.gpus = float(total.get("GPU", 0.0))
        self.cpus = float(total.get("CPU", 0.0))
        self._remote = ray.remote(_call)
        self._refs: dict[Any, tuple[Any, float]] = {}
        self.latencies: list[float] = []

    def submit(self, key, fn: Callable, *args, resources: Resources) -> None:
        task = self._remote.options(
            num_gpus=resources.gpus,
            num_cpus=resources.cpus,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        self._refs[task.remote(fn, resources.threads, *args)] = (key, time.time())

    def pending(self) -> int:
        return len(self._refs)

    def wait(self) -> tuple[Any, Any, BaseException | None]:
        ray = self._ray
        ready: list = []
        while not ready:  # short waits, so that Ctrl-C is seen at once
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=0.5)
        ref = ready[0]
        key, submitted = self._refs.pop(ref)
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # fn raised: its own exception, unwrapped
            return key, None, error.cause if isinstance(error.cause, BaseException) else error
        except ray.exceptions.RayError as error:  # the worker or node died more often than retried
            return key, None, error
        self.latencies.append(max(0.0, out["started"] - submitted))
        return key, out["result"], None

    def cancel(self) -> None:
        """Stop every unfinished task (a run's checkpoints are written whole, so it resumes later)."""
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 - finished in the meantime
                pass
        self._refs.clear()

    def close(self) -> None:
        if self._own:
            self._ray.shutdown()


def open_pool(address: str | None, parallel: bool = True, max_retries: int = 3, log=print):
    """A RayPool when Ray is installed and `parallel`, else an InProcessPool (saying how to get Ray,
    unless one after another was asked for). UserError for an --address without Ray."""
    if not parallel and address is None:
        return InProcessPool()
    try:
        import ray  # noqa: F401
    except ImportError:
        if address is not None:
            raise UserError(f'--address {address} needs Ray: pip install "dreamfusion[cluster]"') from None
        log(f"note: Ray is not installed: {RAY_HINT}")
        return InProcessPool()
    return RayPool(address, max_retries)
