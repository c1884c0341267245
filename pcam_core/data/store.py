"""`PatchStore`: the one way to reach a dataset's pixels, labels, splits and per-patch stats.

The readers in `readers.py` (Kaggle and image folders through the pack cache) and `pcam_h5.py` (PCam HDF5
files) build one; everything else only reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pcam_core.geometry import PATCH, SPLITS


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
