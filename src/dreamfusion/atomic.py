"""Files written whole or not at all: under a temporary name beside the target, renamed when complete.

Every output of the package (checkpoints, configs, metrics, images, meshes, videos, reports) goes
through `atomic_output`, so an interrupted run leaves the last complete file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Read once at import (setting it is the only way to read it, and not thread-safe later).
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_output(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`, then rename it onto `path`; on any error the temporary
    file and the folders made for it are removed and `path` is untouched. The temporary name ends in
    `suffix` (default: `path`'s own extension, so writers infer the format) and starts with a dot.
    The result has an ordinary file's permissions (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # after writing: some writers (safetensors) make their own 0600 file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        for folder in created:  # innermost first: leave no empty folders behind either
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, then rename the result onto `path`. The temporary name ends in .tmp,
    so a file left by a killed process never matches a reader's pattern (step_*.safetensors)."""
    with atomic_output(path, suffix=".tmp") as tmp:
        write(tmp)
