"""PCam HDF5 folders (camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5), read lazily with h5py."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pcam_core.atomic import atomic_write
from pcam_core.data.pack import cache_dir_for, patch_stats, stats_table
from pcam_core.data.store import PatchStore
from pcam_core.geometry import PATCH, SPLITS

log = logging.getLogger(__name__)


def _file(root: Path, split: str, kind: str) -> Path:
    return root / f"camelyonpatch_level_2_split_{split}_{kind}.h5"


class H5Images:
    """images[rows] over the x arrays of several split files, rows numbered across them in split order."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.files = [h5py.File(p, "r") for p in paths]
        self.arrays = [f["x"] for f in self.files]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), PATCH, PATCH, 3), np.uint8)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for k in np.unique(which):
            pick = np.flatnonzero(which == k)
            local = rows[pick] - self.offsets[k]
            # h5py reads a point selection only in increasing order without repeats.
            uniq, inverse = np.unique(local, return_inverse=True)
            try:
                out[pick] = self.arrays[k][uniq][inverse]
            except OSError as e:  # a damaged compressed chunk: `info` passes, reading those rows fails
                raise ValueError(f"{self.paths[k].name} is damaged: rows {uniq[0]} to {uniq[-1]} cannot be "
                                 f"read ({e}); re-download it") from None
        return out


def _labels(root: Path, split: str, n: int) -> np.ndarray:
    path = _file(root, split, "y")
    if not path.is_file():
        return np.full(n, -1, np.int8)
    try:
        with h5py.File(path, "r") as f:
            y = np.asarray(f["y"]).reshape(-1)
    except (OSError, KeyError) as e:
        raise ValueError(f"{path.name} is not a readable PCam label file ({e}); re-download it") from None
    if len(y) != n:
        raise ValueError(f"{path.name} has {len(y)} labels for {n} patches; the x and y files must match")
    if not np.isin(y, [0, 1]).all():
        raise ValueError(f"{path.name} has labels other than 0 and 1; it is not a PCam label file")
    return y.astype(np.int8)


def _image_count(path: Path) -> int:
    """How many patches an x file holds; ValueError unless it is N x 96 x 96 x 3 uint8."""
    try:
        with h5py.File(path, "r") as f:
            if not isinstance(f.get("x"), h5py.Dataset):
                raise ValueError(f"{path.name} has no dataset `x` of images; it is not a PCam image file")
            shape, dtype = f["x"].shape, f["x"].dtype
    except OSError as e:
        raise ValueError(f"{path.name} is not a readable PCam file ({e}); re-download it") from None
    if shape[1:] != (PATCH, PATCH, 3) or dtype != np.uint8:
        raise ValueError(f"{path.name} holds {shape} {dtype} images; PCam files hold N x 96 x 96 x 3 uint8")
    return shape[0]


def open_pcam(root: Path) -> PatchStore:
    """A PatchStore over the PCam HDF5 files in `root`; the stats table is computed once and cached."""
    paths, index_parts = [], []
    offset = 0
    for split in SPLITS:
        path = _file(root, split, "x")
        if not path.is_file():
            continue
        n = _image_count(path)
        index_parts.append(pd.DataFrame({"id": [f"{split}_{i:06d}" for i in range(n)], "split": split,
                                         "label": _labels(root, split, n),
                                         "row": np.arange(offset, offset + n)}))
        paths.append(path)
        offset += n
    if not paths:
        raise ValueError(f"{root} has PCam label files but no camelyonpatch_level_2_split_*_x.h5 image file")
    index = pd.concat(index_parts, ignore_index=True)
    h = hashlib.sha1(b"pcam-v1")
    for p in sorted(root.glob("camelyonpatch_level_2_split_*.h5")):
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    fingerprint = h.hexdigest()
    images = H5Images(paths)
    cache = cache_dir_for(root)

    def stats() -> pd.DataFrame:
        path = cache / f"pcam-stats-{fingerprint[:16]}.parquet"
        if path.is_file():
            return pd.read_parquet(path)
        log.info("computing per-patch stats for %d PCam patches (once)", len(index))
        values = np.concatenate(
            [
                patch_stats(images[np.arange(s, min(s + 4096, len(images)))])
                for s in range(0, len(images), 4096)
            ]
        )
        table = stats_table(index, values)
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            table.to_parquet(tmp, index=False)
        return table

    skipped = pd.DataFrame(columns=["path", "reason"])
    return PatchStore(root, "pcam", index, images, fingerprint, cache, skipped, stats)
