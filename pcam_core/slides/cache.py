"""Where a slide's map lives on disk, and reading it back. This module does not import torch.

A map's folder is keyed by the slide file, the checkpoint file(s) and the settings, so a retrained
model, another stride or TTA gets its own map and an unchanged request reuses the finished one. It holds
`meta.json` (slide, scale, grid, settings, state), `prob.npy` and `failed.npy` (the grid; rewritten after
every chunk, so a stopped run resumes), `tissue.npy`, and once complete the outputs of `slide_export`:
`cells.csv`, `overlay.png`, `cells.geojson`. A background scoring job adds `job.json` and `job.log`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pcam_core.atomic import atomic_write, write_text
from pcam_core.data.pack import cache_dir_for
from pcam_core.runs.folder import alive, checkpoint_file, read_json
from pcam_core.slides.reader import MIN_TISSUE, Grid

STATES = ("running", "stopped", "failed", "finished")


@dataclass(frozen=True)
class MapSettings:
    """What a map depends on besides the slide and the model."""

    stride: int = 32
    tta: int = 1
    mpp: float | None = None  # the user's scale for the slide, overriding its metadata
    min_tissue: float = MIN_TISSUE
    precision: str = "fp32"  # as run: "bf16" or "fp32"


def slides_root(slide_path: str | Path) -> Path:
    """The default home of a slide's maps: the caches of its folder (`pack.cache_dir_for`)."""
    return cache_dir_for(Path(slide_path).resolve().parent) / "slides"


STAMP_BYTES = 1 << 16


def content_stamp(path: Path) -> str:
    """A hash of the file's first and last 64 KiB: a slide's header (its size, tiles' offsets, scanner
    text) and tail. Another slide copied over this one with the same size and time still differs here."""
    with open(path, "rb") as f:
        head = f.read(STAMP_BYTES)
        f.seek(max(0, f.seek(0, 2) - STAMP_BYTES))
        tail = f.read(STAMP_BYTES)
    return hashlib.blake2b(head + tail, digest_size=16).hexdigest()


def map_dir(slide_path: str | Path, checkpoints: list, settings: MapSettings, root: str | Path | None = None
            ) -> Path:
    """The folder of the map of `slide_path` by `checkpoints` with `settings` (the slide known by its
    content too, not only its size and modification time)."""
    slide_path = Path(slide_path).resolve()
    stamp = [[str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size]
             for p in [slide_path, *(checkpoint_file(c) for c in checkpoints)]]
    stamp.append(content_stamp(slide_path))
    key = hashlib.sha1(json.dumps([stamp, settings.__dict__], sort_keys=True).encode()).hexdigest()[:16]
    return Path(root or slides_root(slide_path)) / f"{slide_path.stem}-{key}"


@dataclass
class SlideMap:
    """A map read from its folder: `prob` (rows, cols) float32, NaN where not scored."""

    folder: Path
    meta: dict
    tissue: np.ndarray
    prob: np.ndarray
    failed: np.ndarray

    @property
    def complete(self) -> bool:
        return self.meta.get("state") == "finished"

    @property
    def scored(self) -> int:
        return int(np.isfinite(self.prob).sum())

    @property
    def grid(self) -> Grid:
        return Grid(self.meta["stride"], *self.prob.shape, self.meta["scale"])

    def cells(self) -> pd.DataFrame:
        """One row per scored cell: row, col, level-0 x, y and size of the cell, tissue share, prob."""
        rows, cols = np.nonzero(np.isfinite(self.prob))
        x, y, size = self.grid.cell_box(rows, cols)
        return pd.DataFrame({"row": rows, "col": cols, "x": x, "y": y, "size": size,
                             "tissue": self.tissue[rows, cols].round(3), "prob": self.prob[rows, cols]})


def save_arrays(folder: Path, **arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        with atomic_write(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, array)


def write_meta(folder: Path, meta: dict) -> None:
    write_text(folder / "meta.json", json.dumps(meta, indent=2))


def load_map(folder: str | Path) -> SlideMap | None:
    """The map in `folder`, complete or partial; None when nothing was scored there yet."""
    folder = Path(folder)
    meta = read_json(folder / "meta.json")
    if not meta or not (folder / "prob.npy").is_file():
        return None
    try:
        arrays = {name: np.load(folder / f"{name}.npy") for name in ("tissue", "prob", "failed")}
    except (OSError, ValueError) as e:
        raise ValueError(f"the map in {folder} is damaged ({e}); delete the folder and score again") from e
    return SlideMap(folder, meta, **arrays)


def job_state(folder: str | Path) -> dict:
    """The map's state for a progress display: state, done, total and whether its job is alive."""
    meta = read_json(Path(folder) / "meta.json")
    job = read_json(Path(folder) / "job.json")
    state = meta.get("state", "starting" if job else "not started")
    running = alive(meta.get("pid") or job.get("pid"))
    if state in ("running", "starting") and not running:
        state = "failed"  # the process died without saying so (killed)
    return {"state": state, "done": meta.get("done", 0), "total": meta.get("total", 0), "alive": running,
            "error": meta.get("error", "")}


def typed_scale(slide_path: str | Path) -> float | None:
    """The microns per pixel a user typed for this slide (kept beside its maps), if any."""
    scales = read_json(slides_root(slide_path) / "scales.json") or {}
    value = scales.get(Path(slide_path).name)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def keep_scale(slide_path: str | Path, mpp: float | None) -> None:
    """Remembers the scale typed for this slide (None: forget it; the file's own is used again)."""
    path = slides_root(slide_path) / "scales.json"
    scales = read_json(path) or {}
    if mpp is None:
        scales.pop(Path(slide_path).name, None)
    else:
        scales[Path(slide_path).name] = float(mpp)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(scales, indent=2, sort_keys=True))
