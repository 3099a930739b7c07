"""Output files: checked before any work, written under a temporary name, renamed when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dreamfusion.errors import UserError

# Read once at import (setting it is the only way to read it, and not thread-safe later).
_UMASK = os.umask(0)
os.umask(_UMASK)


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


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same extension, so writers infer the format),
    then rename it onto `path`; on any error the temporary file is removed and `path` untouched."""
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result is an ordinary file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        for folder in created:  # innermost first: leave no empty folders behind either
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
