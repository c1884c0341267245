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

from pcam_core.pack import (
    IMAGE_SUFFIXES,
    PackIndex,
    cache_dir_for,
    fingerprint_files,
    list_image_names,
    load_pack,
    pack_files,
    patch_stats,
    refresh_quick_key,
)

log = logging.getLogger(__name__)

PATCH = 96
CENTRE = slice(32, 64)
SPLITS = ("train", "valid", "test")
PCAM_PATTERN = re.compile(r"camelyonpatch_level_2_split_(train|valid|test)_([xy])\.h5$")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
Progress = Callable[[int, int], None]

__all__ = [
    "CENTRE",
    "PATCH",
    "PatchStore",
    "dataset_files",
    "detect_layout",
    "list_image_names",
    "open_dataset",
    "pack",
    "patch_stats",
    "read_labels_csv",
]


class PatchStore:
    """Random and batch access to the 96x96 RGB patches of one dataset, with labels, splits and stats.

    Attributes:
        root: the dataset folder.
        layout: "kaggle", "pcam" or "folder".
        ids: (N,) patch ids.
        labels: (N,) int8, 1 tumour in the centre 32x32, 0 none, -1 unknown.
        splits: (N,) "train", "valid" or "test".
        fingerprint: changes whenever the data changes; key caches of derived results with it.
        cache_dir: a writable folder for this dataset's caches.
        skipped: bad files left out, with columns path and reason.
    """

    def __init__(
        self,
        root: Path,
        layout: str,
        index: pd.DataFrame,
        images,
        fingerprint: str,
        cache_dir: Path,
        skipped: pd.DataFrame,
        stats: pd.DataFrame | Callable[[], pd.DataFrame],
    ):
        self.root, self.layout = root, layout
        self.ids = index["id"].to_numpy(dtype=str)
        self.labels = index["label"].to_numpy(dtype=np.int8)
        self.splits = index["split"].to_numpy(dtype=str)
        self._rows = index["row"].to_numpy(dtype=np.int64)
        self._images = images  # array-like over cache rows: images[rows] -> (n, 96, 96, 3) uint8
        self.fingerprint, self.cache_dir, self.skipped = fingerprint, cache_dir, skipped
        self._stats = stats
        self._position: dict[str, int] | None = None
        self._masks = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.batch([i])[0]

    def batch(self, indices) -> np.ndarray:
        """Patches at `indices`, in that order: (N, 96, 96, 3) uint8."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"patch index out of range for a store of {len(self)} patches")
        return self._images[self._rows[indices]]

    @property
    def stats(self) -> pd.DataFrame:
        """One row per patch, in store order: id, split, label, channel means/stds, brightness,
        saturation, tissue_frac and the blank flag."""
        if callable(self._stats):
            self._stats = self._stats()
        return self._stats

    def split_names(self) -> list[str]:
        present = set(np.unique(self.splits))
        return [s for s in SPLITS if s in present]

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
        found = np.flatnonzero(self.splits == split)
        if not len(found):
            raise ValueError(f"{self.root} has no {split} patches (it has: {', '.join(self.split_names())})")
        return found

    def has_labels(self, split: str | None = None) -> bool:
        labels = self.labels if split is None else self.labels[self.splits == split]
        return bool(len(labels)) and bool((labels >= 0).all())

    def index_of(self, ids) -> np.ndarray:
        """Store indices of `ids`; ValueError naming the ids this dataset does not have."""
        if self._position is None:
            self._position = {pid: i for i, pid in enumerate(self.ids)}
        ids = [str(i) for i in np.atleast_1d(ids)]
        missing = [i for i in ids if i not in self._position]
        if missing:
            raise ValueError(
                f"{len(missing)} id(s) not in {self.root}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        return np.array([self._position[i] for i in ids], dtype=np.int64)

    def masks(self, indices) -> np.ndarray | None:
        """Tumour masks (N, 96, 96) bool where the dataset ships them (the demo data), else None."""
        path = self.root / "tumour_masks.npz"
        if not path.is_file():
            return None
        if self._masks is None:
            with np.load(path) as z:
                self._masks = ({pid: i for i, pid in enumerate(z["ids"].astype(str))}, z["bits"])
        position, bits = self._masks
        rows = [position.get(pid, -1) for pid in self.ids[np.asarray(indices, dtype=np.int64)]]
        if min(rows, default=0) < 0:
            return None
        return np.unpackbits(bits[rows], axis=1)[:, : PATCH * PATCH].reshape(-1, PATCH, PATCH).astype(bool)

    def describe(self) -> str:
        """The `info` summary: layout, counts per split and label, bad files, cache."""
        lines = [f"dataset: {self.root}", f"layout: {self.layout}", f"patches: {len(self):,}"]
        for split in self.split_names():
            labels = self.labels[self.splits == split]
            counts = f"{len(labels):,}"
            if (labels >= 0).any():
                counts += f" (tumour {(labels == 1).sum():,}, normal {(labels == 0).sum():,}"
                counts += f", unlabelled {(labels < 0).sum():,})" if (labels < 0).any() else ")"
            else:
                counts += " (unlabelled)"
            lines.append(f"  {split}: {counts}")
        lines.append(f"bad files skipped: {len(self.skipped)}")
        for row in self.skipped.head(20).itertuples():
            lines.append(f"  {row.path}: {row.reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        lines.append(f"cache: {self.cache_dir}")
        return "\n".join(lines)


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


def _by_id(folder: Path, prefix: str) -> dict[str, str]:
    """id (file name without suffix) -> path relative to the dataset root, for the images in `folder`."""
    files: dict[str, str] = {}
    if folder.is_dir():
        for name in list_image_names(folder):
            files.setdefault(name.rsplit(".", 1)[0], prefix + name)
    return files


def _kaggle_files(root: Path) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str]]]:
    """(relative path, id, split, label) for each usable file, and (path, reason) for each left out."""
    entries, skipped = [], []
    labels_csv = root / "train_labels.csv"
    labels = read_labels_csv(labels_csv) if labels_csv.is_file() else None
    train = _by_id(root / "train", "train/")
    if train and labels is None:
        raise ValueError(
            f"{root}/train has images but train_labels.csv is missing; add it (columns id,label)"
        )
    if labels is not None:
        for pid, label in zip(labels.index, labels.to_numpy().tolist(), strict=True):
            if not SAFE_ID.match(pid):
                skipped.append((f"train_labels.csv id {pid!r}", "unsafe id (path characters); row ignored"))
            elif pid in train:
                entries.append((train.pop(pid), pid, "train", label))
            else:
                skipped.append((f"train/{pid}.tif", "listed in train_labels.csv but no such file"))
        skipped += [(rel, "no label in train_labels.csv") for rel in train.values()]
    entries += [(rel, pid, "test", -1) for pid, rel in _by_id(root / "test", "test/").items()]
    return entries, skipped


def _folder_files(root: Path) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str]]]:
    csvs = sorted(root.glob("*.csv"))
    if len(csvs) > 1:
        names = ", ".join(c.name for c in csvs)
        raise ValueError(f"{root} has several CSV files ({names}); keep one labels CSV with columns id,label")
    labels = read_labels_csv(csvs[0]).to_dict() if csvs else {}
    files = _by_id(root, "")
    skipped = [
        (f"{csvs[0].name} id {pid!r}", "listed in the labels CSV but no such file")
        for pid in labels
        if pid not in files
    ]
    entries = [
        (rel, pid, "train" if pid in labels else "test", int(labels.get(pid, -1)))
        for pid, rel in files.items()
    ]
    return entries, skipped


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
    return packed, {
        "reused": True,
        "n": len(packed.index),
        "n_skipped": len(packed.skipped),
        "seconds": 0.0,
        "cache_dir": cache,
    }


def open_dataset(path, progress: Progress | None = None) -> PatchStore:
    """Open a dataset folder of any supported layout; packs Kaggle and image folders on first use.

    Args:
        path: a Kaggle folder, a PCam HDF5 folder or a folder of images with an optional labels CSV.
        progress: called as progress(done, total) while packing.
    """
    root = Path(path).expanduser().resolve()
    layout = detect_layout(root)
    if layout == "pcam":
        from pcam_core.pcam_h5 import open_pcam

        return open_pcam(root, PatchStore)
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
