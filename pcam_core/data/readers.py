"""Dataset readers: a Kaggle folder, a PCam HDF5 folder or a folder of images, all behind `PatchStore`.

Kaggle and image folders are decoded once into a uint8 cache (`pack.py`); PCam HDF5 files are read
lazily with h5py. `open_dataset(path)` detects the layout and returns a `PatchStore`, the one way
the rest of PCam Review reaches pixels.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pcam_core.data.pack import (
    IMAGE_SUFFIXES,
    PackIndex,
    cache_dir_for,
    fingerprint_files,
    list_image_names,
    load_pack,
    pack_files,
    pack_lock,
    patch_stats,
    refresh_quick_key,
    remove_stale_builds,
)
from pcam_core.data.pcam_h5 import open_pcam
from pcam_core.data.store import PatchStore
from pcam_core.geometry import CENTRE, PATCH

log = logging.getLogger(__name__)
PCAM_PATTERN = re.compile(r"camelyonpatch_level_2_split_(train|valid|test)_([xy])\.h5$")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
Progress = Callable[[int, int], None]

__all__ = [
    "CENTRE",
    "PATCH",
    "PatchStore",
    "dataset_files",
    "detect_layout",
    "is_packed",
    "list_image_names",
    "open_dataset",
    "pack",
    "patch_stats",
    "read_labels_csv",
]


def detect_layout(root: Path) -> str:
    """'kaggle', 'pcam' or 'folder'; ValueError for a missing, empty or unrecognised folder."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist; give the folder that holds the patches"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; give the folder that holds the patches")
    names = {p.name for p in root.iterdir() if not p.name.startswith(".")}
    if not names:
        raise ValueError(f"dataset folder {root} is empty")
    if any(PCAM_PATTERN.match(n) for n in names):
        return "pcam"
    if {"train_labels.csv", "sample_submission.csv"} & names or any(
        (root / s).is_dir() for s in ("train", "test")
    ):
        return "kaggle"
    if any(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
        return "folder"
    raise ValueError(
        f"{root} has no known layout: expected a Kaggle folder (train/, test/, train_labels.csv), "
        "PCam files (camelyonpatch_level_2_split_*_x.h5) or image files (.tif, .png, .jpg)"
    )


def read_labels_csv(path: Path) -> pd.Series:
    """id -> label from a CSV with columns id,label; ValueError for wrong columns, labels or duplicates."""
    try:
        table = pd.read_csv(path, dtype={"id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path} is not a readable CSV ({e}); it needs the columns id,label") from e
    if not {"id", "label"} <= set(table.columns):
        raise ValueError(f"{path} has columns {list(table.columns)}; it needs the columns id,label")
    labels = pd.to_numeric(table["label"], errors="coerce")
    bad = table.loc[~labels.isin([0, 1]), ["id", "label"]]
    if len(bad):
        first = bad.iloc[0]
        raise ValueError(
            f"{path}: labels must be 0 or 1, but {len(bad)} row(s) are not "
            f"(first: id {first['id']!r}, label {first['label']!r}); fix or remove them"
        )
    dup = table["id"][table["id"].duplicated()]
    if len(dup):
        raise ValueError(
            f"{path}: {len(dup)} duplicate id(s), e.g. {dup.iloc[0]!r}; each id must appear once"
        )
    return pd.Series(labels.astype(np.int8).to_numpy(), index=table["id"].astype(str).to_numpy())


def _by_id(folder: Path, prefix: str, skipped: list[tuple[str, str]]) -> dict[str, str]:
    """id (file name without suffix) -> path relative to the dataset root, for the images in `folder`;
    a name that is not valid UTF-8 is added to `skipped` instead (ids are text in CSVs and the app)."""
    files: dict[str, str] = {}
    if folder.is_dir():
        for name in list_image_names(folder):
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                skipped.append((prefix + shown, "file name is not valid UTF-8; rename the file"))
                continue
            files.setdefault(name.rsplit(".", 1)[0], prefix + name)
    return files


def _kaggle_files(root: Path) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str]]]:
    """(relative path, id, split, label) for each usable file, and (path, reason) for each left out."""
    entries, skipped = [], []
    labels_csv = root / "train_labels.csv"
    labels = read_labels_csv(labels_csv) if labels_csv.is_file() else None
    train = _by_id(root / "train", "train/", skipped)
    if train and labels is None:
        raise ValueError(
            f"{root}/train has images but train_labels.csv is missing; add it (columns id,label)"
        )
    if labels is not None:
        for pid, label in zip(labels.index, labels.to_numpy().tolist(), strict=True):
            if not SAFE_ID.match(pid):
                skipped.append((f"train_labels.csv id {pid!r}", "an id may only hold ASCII letters, digits, "
                                "'_', '.' and '-' (it names a file); row ignored"))
            elif pid in train:
                entries.append((train.pop(pid), pid, "train", label))
            else:
                skipped.append((f"train/{pid}.tif", "listed in train_labels.csv but no such file"))
        skipped += [(rel, "no label in train_labels.csv") for rel in train.values()]
    entries += [(rel, pid, "test", -1) for pid, rel in _by_id(root / "test", "test/", skipped).items()]
    return entries, skipped


def _folder_files(root: Path) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str]]]:
    csvs = sorted(root.glob("*.csv"))
    if len(csvs) > 1:
        names = ", ".join(c.name for c in csvs)
        raise ValueError(f"{root} has several CSV files ({names}); keep one labels CSV with columns id,label")
    labels = read_labels_csv(csvs[0]).to_dict() if csvs else {}
    skipped: list[tuple[str, str]] = []
    files = _by_id(root, "", skipped)
    skipped += [
        (f"{csvs[0].name} id {pid!r}", "listed in the labels CSV but no such file")
        for pid in labels
        if pid not in files
    ]
    entries = [
        (rel, pid, "train" if pid in labels else "test", int(labels.get(pid, -1)))
        for pid, rel in files.items()
    ]
    return entries, skipped


def is_packed(path) -> bool:
    """Whether opening `path` decodes nothing: a PCam HDF5 folder, or a folder whose pack cache is current."""
    root = Path(path).expanduser().resolve()
    return detect_layout(root) == "pcam" or load_pack(cache_dir_for(root), None, root=root) is not None


def pack(path, progress: Progress | None = None, force: bool = False) -> dict:
    """Decode a Kaggle or image folder into the uint8 cache unless a current one exists.

    Returns:
        dict with reused, n (patches packed), n_skipped, seconds and cache_dir.
    """
    root = Path(path).expanduser().resolve()
    layout = detect_layout(root)
    if layout == "pcam":
        raise ValueError(f"{root} holds PCam HDF5 files, which are read directly; nothing to pack")
    return _ensure_pack(root, layout, progress, force)[1]


def _ensure_pack(root: Path, layout: str, progress: Progress | None, force: bool) -> tuple[PackIndex, dict]:
    cache = cache_dir_for(root)
    remove_stale_builds(cache)  # the temp folders of packs that died, so they never keep a disk full
    packed = None if force else load_pack(cache, None, root=root)
    if packed is None:
        with pack_lock(cache):
            return _pack_locked(root, layout, cache, progress, force)
    return packed, _reused(packed, cache)


def _pack_locked(root: Path, layout: str, cache: Path, progress: Progress | None,
                 force: bool) -> tuple[PackIndex, dict]:
    """Under the pack lock: reuse a pack another process just finished, else build one."""
    packed = None if force else load_pack(cache, None, root=root)
    if packed is None:
        entries, skipped = (_kaggle_files if layout == "kaggle" else _folder_files)(root)
        if not entries:
            raise ValueError(
                f"{root} has no usable patches ({len(skipped)} entries skipped"
                + (f", first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ")")
            )
        fingerprint = fingerprint_files(entries, skipped)
        packed = None if force else load_pack(cache, fingerprint)
        if packed is not None:
            refresh_quick_key(cache, root)
        else:
            info = pack_files(cache, fingerprint, entries, skipped, root, progress)
            packed = load_pack(cache, fingerprint)
            if packed is None:
                raise RuntimeError(f"the cache written to {cache} could not be read back")
            return packed, info
    return packed, _reused(packed, cache)


def _reused(packed: PackIndex, cache: Path) -> dict:
    return {"reused": True, "n": len(packed.index), "n_skipped": len(packed.skipped), "seconds": 0.0,
            "cache_dir": cache}


def open_dataset(path, progress: Progress | None = None) -> PatchStore:
    """Open a dataset folder of any supported layout; packs Kaggle and image folders on first use.

    Args:
        path: a Kaggle folder, a PCam HDF5 folder or a folder of images with an optional labels CSV.
        progress: called as progress(done, total) while packing.
    """
    root = Path(path).expanduser().resolve()
    layout = detect_layout(root)
    if layout == "pcam":
        return open_pcam(root)
    packed, _ = _ensure_pack(root, layout, progress, force=False)
    return PatchStore(
        root,
        layout,
        packed.index,
        packed.images,
        packed.fingerprint,
        cache_dir_for(root),
        packed.skipped,
        packed.stats,
    )


def dataset_files(path) -> list[Path]:
    """The image files a Kaggle or image folder dataset would pack (for benchmarks)."""
    root = Path(path).expanduser().resolve()
    layout = detect_layout(root)
    if layout == "pcam":
        raise ValueError(f"{root} holds PCam HDF5 files, not image files")
    return [root / e[0] for e in (_kaggle_files if layout == "kaggle" else _folder_files)(root)[0]]
