"""Output files: checked before any work, written under a temporary name, renamed when complete."""

from __future__ import annotations

import os
from pathlib import Path

from dreamfusion.atomic import atomic_output
from dreamfusion.errors import UserError

__all__ = ["atomic_output", "check_output"]


def check_output(path: Path, suffixes: tuple[str, ...]) -> Path:
    """Refuse an output path that is a folder or has the wrong extension (UserError, one line)."""
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise UserError(
            f"output path {path} is a folder; give a file name such as {path / ('out' + suffixes[0])}"
        )
    if path.suffix.lower() not in suffixes:
        raise UserError(f"output file {path} must end in {' or '.join(suffixes)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"cannot write {path}: {path.parent} is a file, not a folder")
    return path
