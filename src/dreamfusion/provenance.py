"""Where a measurement came from: the machine and the commit, recorded in every benchmark report."""

from __future__ import annotations

import platform
import subprocess

import torch


def machine_info(**extra: str) -> dict[str, object]:
    """Platform, Python, torch, CPU threads and (when there is one) the GPU, plus `extra` versions."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        **extra,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_commit() -> str:
    """The short hash of HEAD, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
