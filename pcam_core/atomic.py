"""`atomic_write`: the one way a file that must never be read half-written is written.

The content goes to a hidden temp file beside the target, which is renamed over it only when complete;
on any failure (a full disk included) the temp file is removed and the target keeps its old content.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields a temp path to write; on leaving the block it replaces `path`, or is removed on an error.

    Example:
        with atomic_write(run / "status.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == 28:  # ENOSPC: say where and how much is left
            free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
            raise OSError(e.errno, f"disk full while writing {path} ({free / 2**20:.0f} MiB free); "
                                   f"free some space and try again") from e
        raise


def write_text(path: str | Path, text: str) -> None:
    """Replaces the text file `path` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
