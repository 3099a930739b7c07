"""Where a measurement came from: the machine and the commit, recorded in every benchmark report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

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
        count = torch.cuda.device_count()
        if count > 1:
            info["gpu_count"] = count
    return info


def git_commit() -> str:
    """The short hash of HEAD of the checkout this package runs from, "+dirty" when tracked files
    differ from it, or "unknown" outside a git checkout. $DREAMFUSION_COMMIT overrides it (for a copy
    of the tree whose .git is stale or absent, such as a remote machine's)."""
    override = os.environ.get("DREAMFUSION_COMMIT", "").strip()
    if override:
        return override
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=here).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
