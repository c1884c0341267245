"""`atomic_write`, the one way a file that must never be read half-written is written; `file_lock`, the one
way two processes (or two app sessions) take turns at something.

The content goes to a hidden temp file beside the target, which is renamed over it only when complete;
on any failure (a full disk included) the temp file is removed and the target keeps its old content.
Each writer has its own temp name, so two threads of one process (two app sessions) never share one.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def write_cache(path: str | Path, write: Callable[[Path], None]) -> None:
    """Writes a cache file atomically with `write(tmp)`. A failure (a full disk, a read-only folder) is
    logged, not raised: the caller still has its result, only the next call computes it again."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            write(tmp)
    except OSError as e:
        log.warning("could not cache %s in %s: %s", path.name, path.parent, e)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields a temp path to write; on leaving the block it replaces `path`, or is removed on an error.

    Example:
        with atomic_write(run / "status.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # say where, and how much is left
            free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
            raise OSError(e.errno, f"disk full while writing {path} ({free / 2**20:.0f} MiB free); "
                                   f"free some space and try again") from e
        raise


def write_text(path: str | Path, text: str) -> None:
    """Replaces the text file `path` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


@contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[bool]:
    """Holds an exclusive lock on `path` (created, with its folder) for the block.

    With `wait=False` it does not wait for another holder: it yields False, and the block should skip
    what needed the lock. flock locks an open file, so it serialises threads as well as processes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
