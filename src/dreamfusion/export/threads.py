"""Torch's CPU threads during an export: no more than the cores other processes leave idle.

Torch splits each op over all its threads and waits for the last one. When another process keeps
the cores busy (a training run beside the export), the scheduler preempts one of those threads
for a whole time slice at almost every op, and the export runs several times slower on two
threads than on one. So an export on the CPU first looks at how busy the cores it may run on
are (Linux /proc/stat, over a tenth of a second) and uses only the idle ones, one at least; where
that cannot be read it keeps torch's setting.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SAMPLE_SECONDS = 0.1  # how long the cores' activity is watched


def _cpu_times(path: str) -> dict[str, tuple[int, int]]:
    """(idle, total) clock ticks so far of each core ("cpu0", "cpu1", ...) listed in /proc/stat."""
    out = {}
    with open(path) as f:
        for line in f:
            name, *fields = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            out[name] = (ticks[3] + ticks[4], sum(ticks))
    return out


def idle_cpus(seconds: float = SAMPLE_SECONDS, path: str = "/proc/stat") -> float | None:
    """How many of the cores this process may run on sat idle over the next `seconds`; None where
    the kernel does not say (no /proc/stat)."""
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        allowed = None
    try:
        before = _cpu_times(path)
        time.sleep(seconds)
        after = _cpu_times(path)
    except (OSError, ValueError):
        return None
    idle = 0.0
    counted = 0
    for name, (idle1, total1) in after.items():
        if name not in before or (allowed is not None and name not in allowed):
            continue
        idle0, total0 = before[name]
        if total1 > total0:
            idle += (idle1 - idle0) / (total1 - total0)
            counted += 1
    return idle if counted else None


def threads_for(idle: float | None, current: int) -> int:
    """Torch threads for `idle` idle cores: the nearest whole number, at least 1, at most `current`."""
    if idle is None:
        return current
    return max(1, min(current, int(idle + 0.5)))


@contextmanager
def export_threads(device: torch.device, threads: int = 0) -> Iterator[int]:
    """Run the block with `threads` torch CPU threads (0: the idle cores, see the module's docstring),
    then restore torch's setting. Fields on a GPU keep torch's setting. Yields the thread count."""
    current = torch.get_num_threads()
    if threads <= 0:
        threads = current if device.type != "cpu" else threads_for(idle_cpus(), current)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(current)
