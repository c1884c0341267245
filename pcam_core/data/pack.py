"""The uint8 patch cache: a folder of image files decoded once, in parallel, into a memory-mapped .npy.

Layout of a cache folder (`cache_dir_for(data)/pack/`, outside the data folder):

    images.npy      (rows, 96, 96, 3) uint8, memory-mapped; a bad file leaves its row unused
    index.parquet   id, split, label, row: one line per good patch, in store order
    stats.parquet   per-patch statistics for the EDA, same order
    skipped.csv     path, reason: the files left out
    manifest.json   written last: fingerprint, quick key, counts

A pack is built in a temporary sibling folder and renamed into place only when complete, so a crash
half-way leaves either the previous cache or none, never one that reads as complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pcam_core.atomic import file_lock, write_text
from pcam_core.data.decode import decode_file
from pcam_core.geometry import PATCH, PATCH_BYTES

log = logging.getLogger(__name__)

PACK_VERSION = 1
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
STATS_COLUMNS = [
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "brightness",
    "saturation",
    "tissue_frac",
]
CHUNK = 512
BLANK_TISSUE = 0.1  # a patch with less tissue than this share is blank (glass, fat, background)


@dataclass
class PackIndex:
    index: pd.DataFrame
    images: np.ndarray
    fingerprint: str
    skipped: pd.DataFrame
    stats: Callable[[], pd.DataFrame]


def list_image_names(folder: Path) -> list[str]:
    """Names of the image files directly inside `folder`, sorted (hidden files and folders ignored).

    An entry that cannot even be checked (a symlink loop, a dangling link) is kept: decoding it fails and
    it is listed among the skipped files with the reason, instead of stopping the whole listing.
    """
    with os.scandir(folder) as it:
        return sorted(e.name for e in it
                      if e.name.lower().endswith(IMAGE_SUFFIXES) and e.name[0] != "." and not _is_dir(e))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def cache_dir_for(root: Path) -> Path:
    """Where the caches of dataset `root` live: $PCAM_CACHE_DIR/<tag>, else the user's cache
    ($XDG_CACHE_HOME or ~/.cache)/pcam-review/<tag>; <tag> is the folder's name and a hash of its path.

    A data folder is only read: nothing is written inside it. A `.pcam_cache/` that an earlier version
    wrote there is still used, so an upgrade does not decode the data again.
    """
    root = Path(root).resolve()
    tag = f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:10]}"
    if not os.environ.get("PCAM_CACHE_DIR") and (root / ".pcam_cache").is_dir():
        return root / ".pcam_cache"
    return cache_root() / tag


def cache_root() -> Path:
    """The folder every cache lives under: $PCAM_CACHE_DIR, else ($XDG_CACHE_HOME or ~/.cache)/pcam-review."""
    if os.environ.get("PCAM_CACHE_DIR"):
        return Path(os.environ["PCAM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pcam-review"


def quick_key(root: Path) -> list:
    """Modification stamps of the dataset's folders and CSVs: unchanged stamps mean an unchanged listing."""
    key = []
    for p in [root, root / "train", root / "test", *sorted(root.glob("*.csv"))]:
        try:
            st = p.stat()
            key.append([p.name, st.st_mtime_ns, st.st_size if p.is_file() else 0])
        except FileNotFoundError:
            key.append([p.name, None, None])
    return key


def fingerprint_files(
    entries: Sequence[tuple[str, str, str, int]], skipped: Sequence[tuple[str, str]]
) -> str:
    """Hash of the listing: each file's relative name, id, split and label, and what was skipped."""
    h = hashlib.sha1(f"pack-v{PACK_VERSION}".encode())
    for f, pid, split, label in entries:
        h.update(f"{f}|{pid}|{split}|{label}\n".encode())
    for path, reason in skipped:
        h.update(f"skip|{path}|{reason}\n".encode())
    return h.hexdigest()


def load_pack(cache: Path, fingerprint: str | None, root: Path | None = None) -> PackIndex | None:
    """The complete pack in `cache`, when it matches `fingerprint` (or the quick key of `root`); else None."""
    folder = cache / "pack"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if manifest.get("version") != PACK_VERSION:
        return None
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        return None
    if root is not None and manifest.get("quick_key") != quick_key(root):
        return None
    try:
        index = pd.read_parquet(folder / "index.parquet")
        images = np.load(folder / "images.npy", mmap_mode="r")
        skipped = pd.read_csv(folder / "skipped.csv", dtype=str, keep_default_na=False)
        pq.read_metadata(folder / "stats.parquet")  # read lazily later: check now that it is whole
        if images.shape[1:] != (PATCH, PATCH, 3) or len(index) and index["row"].max() >= len(images):
            raise ValueError(f"images.npy holds {images.shape}, which does not match index.parquet")
    except (OSError, ValueError) as e:
        log.warning("cache in %s is unreadable (%s); it will be rebuilt", folder, e)
        return None
    return PackIndex(
        index, images, manifest["fingerprint"], skipped, lambda: pd.read_parquet(folder / "stats.parquet")
    )


def refresh_quick_key(cache: Path, root: Path) -> None:
    """Record the folder stamps of an unchanged listing so the next open skips listing the files."""
    path = cache / "pack" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["quick_key"] = quick_key(root)
    write_text(path, json.dumps(manifest, indent=1))


def patch_stats(x: np.ndarray, step: int = 3) -> np.ndarray:
    """Per-patch statistics of (N, 96, 96, 3) uint8 patches -> (N, 9) float32 in STATS_COLUMNS order.

    Estimated on every `step`-th pixel in each direction: at 3 (a 32x32 grid) the EDA's distributions do
    not change visibly and packing runs several times faster than with all 9,216 pixels. At 1 they do not
    depend on the patch's orientation.
    """
    grid = x[:, ::step, ::step].transpose(0, 3, 1, 2)
    planes = np.ascontiguousarray(grid).reshape(len(x), 3, -1)  # (N, 3, P)
    f = planes.astype(np.float32)
    mean, std = f.mean(-1), f.std(-1)  # (N, 3)
    grey = 0.299 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2]  # (N, P)
    hi = np.maximum(np.maximum(planes[:, 0], planes[:, 1]), planes[:, 2]).astype(np.float32)
    lo = np.minimum(np.minimum(planes[:, 0], planes[:, 1]), planes[:, 2]).astype(np.float32)
    sat = (hi - lo) / np.maximum(hi, 1)
    # Tissue: stained (saturated) or dark pixels; glass, fat and blown-out background are pale and grey.
    tissue = ((sat > 0.12) & (grey < 235)) | ((grey < 200) & (grey > 20))
    return np.column_stack([mean, std, grey.mean(1), sat.mean(1), tissue.mean(1)]).astype(np.float32)


def stats_table(index: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    """The store's stats table: id, split, label, the patch_stats columns and the blank flag."""
    table = pd.DataFrame(values, columns=STATS_COLUMNS)
    table.insert(0, "id", index["id"].to_numpy())
    table.insert(1, "split", index["split"].to_numpy())
    table.insert(2, "label", index["label"].to_numpy())
    table["blank"] = table["tissue_frac"] < BLANK_TISSUE
    return table


def _decode_chunk(job: tuple[str, int, list[str]]) -> tuple[int, np.ndarray, list[str | None], np.ndarray]:
    """Worker: decode files into rows start.. of the memory-mapped images.npy; return ok flags and stats."""
    images_path, start, files = job
    out = np.load(images_path, mmap_mode="r+")
    ok = np.zeros(len(files), bool)
    reasons: list[str | None] = [None] * len(files)
    for i, f in enumerate(files):
        try:
            out[start + i] = decode_file(f)
            ok[i] = True
        except (ValueError, OSError) as e:
            reasons[i] = str(e)
    stats = patch_stats(np.asarray(out[start : start + len(files)]))
    # No msync here: the parent reads the same page cache, and writes the manifest only after every row.
    del out
    return start, ok, reasons, stats


def pool_context() -> mp.context.BaseContext:
    """ "fork" from a plain single-threaded process (cheapest); "forkserver" from one that runs other
    Python threads (the Streamlit server) or has imported torch (its thread pools): forking a process
    while another thread holds a lock can leave the child waiting on that lock forever."""
    if threading.active_count() == 1 and "torch" not in sys.modules:
        return mp.get_context("fork")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


@contextmanager
def main_script_hidden():
    """A forkserver worker re-runs the parent's main script before it takes work (Python does so in case
    the work was defined there). Ours lives in this module, and the main script may be a Streamlit page
    run by AppTest, or any unguarded script, which must not run again in a decode worker: hide it
    while the pool starts its workers."""
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path


def remove_stale_builds(cache: Path, locked: bool = False) -> None:
    """Removes the temporary folders of packs that died (killed, power cut, full disk) before finishing.

    Only a holder of the pack lock may: every other pack of this cache then is dead. Without the lock
    (`locked=False`) it tries to take it and skips the cleaning when a pack is running.
    """
    if not cache.is_dir():
        return
    with contextlib.nullcontext(True) if locked else file_lock(cache / "pack.lock", wait=False) as held:
        if held:
            for folder in [*cache.glob("pack.tmp-*"), *cache.glob("pack.old-*")]:
                shutil.rmtree(folder, ignore_errors=True)


def _decode_all(images_path: Path, entries: list, root: Path,
                progress) -> tuple[np.ndarray, list, np.ndarray]:
    """Decodes every entry into the memory-mapped `images_path`, CHUNK files per task, on all cores.

    Returns:
        (ok (n,) bool, reasons (n,) str or None, stats (n, len(STATS_COLUMNS)) float32).
    """
    n = len(entries)
    jobs = [(str(images_path), s, [os.path.join(root, e[0]) for e in entries[s : s + CHUNK]])
            for s in range(0, n, CHUNK)]
    ok = np.zeros(n, bool)
    reasons: list[str | None] = [None] * n
    stats = np.zeros((n, len(STATS_COLUMNS)), np.float32)
    done = 0
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (killed, or SIGBUS writing the
    # memory-mapped cache on a full disk) breaks the pool with an error instead of hanging the parent
    workers = min(len(jobs), os.cpu_count() or 1)
    with main_script_hidden(), ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        futures = [pool.submit(_decode_chunk, job) for job in jobs]
        try:
            for future in as_completed(futures):
                s, chunk_ok, chunk_reasons, chunk_stats = future.result()
                ok[s : s + len(chunk_ok)] = chunk_ok
                reasons[s : s + len(chunk_ok)] = chunk_reasons
                stats[s : s + len(chunk_ok)] = chunk_stats
                done += len(chunk_ok)
                if progress:
                    progress(done, n)
        except BrokenProcessPool as e:
            free = shutil.disk_usage(images_path.parent).free / 2**20
            raise OSError(f"a decode worker died while packing into {images_path.parent} ({free:.0f} MiB "
                          f"free there): a full disk or too little memory; free some, or set "
                          f"PCAM_CACHE_DIR to another disk") from e
        except BaseException:  # Ctrl-C, a failing progress callback: drop the queued chunks, do not finish
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return ok, reasons, stats


def check_free_space(cache: Path, n: int) -> None:
    """Refuses to start a pack of `n` patches that cannot fit on the cache's disk."""
    needed = n * (PATCH_BYTES + 200) + (8 << 20)  # pixels, index and stats rows, and some slack
    free = shutil.disk_usage(cache).free
    if needed > free:
        raise OSError(errno.ENOSPC, f"packing {n:,} patches needs {needed / 2**20:,.0f} MiB in {cache}, but "
                                    f"only {free / 2**20:,.0f} MiB are free; free space there or set "
                                    f"PCAM_CACHE_DIR to a bigger disk")


def pack_lock(cache: Path):
    """Serialises packs of one dataset (two app sessions, or `pack --force` twice): the second waits and
    then finds the first one's cache current, instead of racing it on the final rename."""
    return file_lock(cache / "pack.lock")


def pack_files(
    cache: Path,
    fingerprint: str,
    entries: list[tuple[str, str, str, int]],
    skipped: list[tuple[str, str]],
    root: Path,
    progress=None,
) -> dict:
    """Decode `entries` (path relative to root, id, split, label) into a fresh pack in `cache`, in
    parallel on all cores; the finished folder replaces the previous pack by a rename."""
    start_time = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(cache, locked=True)  # the caller holds the pack lock
    check_free_space(cache, len(entries))
    tmp = cache / f"pack.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        n = len(entries)
        images_path = tmp / "images.npy"
        np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(n, PATCH, PATCH, 3)).flush()
        ok, reasons, stats = _decode_all(images_path, entries, root, progress)
        skipped = skipped + [(entries[i][0], reasons[i]) for i in np.flatnonzero(~ok)]
        if not ok.any():
            raise ValueError(
                f"none of the {n} image files in {root} could be read; first problem: "
                f"{skipped[-1][0]}: {skipped[-1][1]}"
            )
        good = np.flatnonzero(ok)
        index = pd.DataFrame({"id": [entries[i][1] for i in good], "split": [entries[i][2] for i in good],
                              "label": np.array([entries[i][3] for i in good], np.int8),
                              "row": good.astype(np.int64)})
        index.to_parquet(tmp / "index.parquet", index=False)
        stats_table(index, stats[good]).to_parquet(tmp / "stats.parquet", index=False)
        pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(tmp / "skipped.csv", index=False)
        manifest = {"version": PACK_VERSION, "fingerprint": fingerprint, "quick_key": quick_key(root),
                    "root": str(root), "n": int(len(good)), "n_skipped": len(skipped)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        final, old = cache / "pack", cache / f"pack.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start_time
    log.info("packed %d patches from %s in %.1f s", len(good), root, seconds)
    return {"reused": False, "n": int(len(good)), "n_skipped": len(skipped), "seconds": seconds,
            "cache_dir": cache}
