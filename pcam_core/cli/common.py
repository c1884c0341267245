"""What the command-line modules share: the progress bar, the user errors, rank-aware dataset opening.

Nothing here imports torch at module level, so `info` and `pack` start fast.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
from pathlib import Path

from tqdm import tqdm

# failures a user or the machine can cause (bad input; a full disk, a missing or unwritable path, a corrupt
# file): `cli.main` turns them into one line on stderr and exit status 2; anything else (KeyError,
# TypeError, ...) is a bug and keeps its traceback
USER_ERRORS = (ValueError, OSError)


class Bar:
    """A tqdm bar driven by `progress(done, total)` callbacks from the library."""

    def __init__(self, desc: str, unit: str = "patch"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True,
                            disable=rank() > 0)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def keep_freed_memory() -> None:
    """Lets this process reuse the memory its tensors free instead of handing it back to the OS (glibc).

    A training step allocates and frees activations of tens of MB (base_cnn's first block: 72 MB at batch
    64). glibc serves blocks over 32 MB with mmap and unmaps them when freed, so every step faults fresh
    pages in and zeroes them: 20,000-80,000 page faults, 0.1-0.3 s of system time per base_cnn step on a
    2-core EPYC. With mmap off and no trimming, freed blocks are reused: no faults after the first steps
    (BENCHMARKS.md, issue 10). The process then keeps its peak memory until it ends, which a command can
    afford; the app server, which runs for days, does not call this.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def writable_file(path: Path) -> Path:
    """Fails before any long work when `path` cannot be written (creates its folder)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder of {path}: {e.strerror or e}; pick another --out") from e
    target = path if path.exists() else path.parent
    if path.is_dir() or not os.access(target, os.W_OK):
        raise ValueError(f"cannot write {path}: not a writable file path; choose another --out")
    return path


def open_store(data: Path):
    from pcam_core.data.readers import open_dataset

    bar = Bar("pack")
    try:
        return open_dataset(data, progress=bar)
    finally:
        bar.close()


class ReportedByRankZero(ValueError):
    """An error rank 0 has already printed; the other ranks exit without repeating it."""


def rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints results and writes files.

    Read from the environment, not `distributed.Distributed`, so commands that never touch torch start fast.
    """
    return int(os.environ.get("RANK", "0"))


def open_store_ranked(args: argparse.Namespace):
    """`open_store`, except under torchrun: rank 0 packs the data while the other ranks wait, then they
    open the cache it wrote (several ranks packing one folder at once would each do all the work)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return open_store(args.data)
    from pcam_core.data.readers import open_dataset
    from pcam_core.models.distributed import Distributed

    ctx = Distributed(args.device)
    store, failure = None, None
    if ctx.main:
        try:
            store = open_store(args.data)
        except USER_ERRORS as e:
            failure = e
    message = ctx.same(str(failure) if failure else None)  # also the barrier the other ranks wait at
    if failure:
        raise failure
    if message:
        raise ReportedByRankZero(message)
    return store or open_dataset(args.data)
