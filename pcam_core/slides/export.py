"""What a slide's map is written as: the cells CSV, the overlay PNG, QuPath GeoJSON, and a patch dataset.

Coordinates are level-0 pixels of the slide throughout, so QuPath (File > Import objects) and any
viewer place them where the tissue is. This module does not import torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import tifffile
from PIL import Image

from pcam_core.atomic import atomic_write, write_text
from pcam_core.slides.cache import SlideMap

THRESHOLD = 0.5
COLORMAP = "inferno"


_WINDOW = re.compile(r"_x(-?\d+)_y(-?\d+)_w(\d+)$")


def cell_id(slide_name: str, x: int, y: int, size: int) -> str:
    """The patch id of the window at level-0 (x, y), `size` px a side: a valid file name and dataset id,
    the same whatever the map's stride."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", slide_name).lstrip("._-") or "slide"
    return f"{safe}_x{x}_y{y}_w{size}"


def parse_cell_id(patch_id: str) -> tuple[int, int, int]:
    """(x, y, size) of a `cell_id`."""
    found = _WINDOW.search(patch_id)
    if found is None:
        raise ValueError(f"{patch_id!r} is not a slide cell's id (NAME_xX_yY_wSIZE)")
    return int(found[1]), int(found[2]), int(found[3])


def heat_rgba(prob: np.ndarray, opacity: float = 0.55, colormap: str = COLORMAP) -> np.ndarray:
    """(rows, cols, 4) uint8: the map coloured, transparent where no cell was scored."""
    import matplotlib

    rgba = matplotlib.colormaps[colormap](np.nan_to_num(prob, nan=0.0))
    rgba[..., 3] = np.where(np.isfinite(prob), opacity, 0.0)
    return (rgba * 255).round().astype(np.uint8)


def overlay_png(slide_map: SlideMap, thumbnail: np.ndarray, down: float, path: Path,
                opacity: float = 0.55) -> None:
    """The map over the slide's thumbnail (`down` level-0 pixels per thumbnail pixel), as a PNG.

    Each thumbnail pixel takes the cell it falls in (nearest), so cell edges stay sharp and no cell
    bleeds into the glass next to it."""
    h, w = thumbnail.shape[:2]
    size = slide_map.grid.cell_size / down  # thumbnail pixels per cell
    rows = np.minimum((np.arange(h) + 0.5) // size, slide_map.prob.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) // size, slide_map.prob.shape[1] - 1).astype(int)
    heat = heat_rgba(slide_map.prob, opacity)[rows[:, None], cols[None, :]]  # (h, w, 4)
    alpha = heat[..., 3:] / 255
    image = (thumbnail * (1 - alpha) + heat[..., :3] * alpha).round().astype(np.uint8)
    with atomic_write(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def geojson(slide_map: SlideMap, threshold: float = THRESHOLD) -> dict:
    """A FeatureCollection QuPath imports: each cell at or over `threshold` as a detection with its
    P(tumour) as a measurement, and the tumour regions (those cells merged) as annotations. Cells on the
    slide's right and bottom edges are cut at the edge: nothing reaches past the slide."""
    cells = slide_map.cells()
    hot = cells[cells["prob"] >= threshold]
    boxes = shapely.box(hot["x"], hot["y"], hot["x"] + hot["size"], hot["y"] + hot["size"])
    if "size" in slide_map.meta:
        width, height = slide_map.meta["size"]
        boxes = shapely.clip_by_rect(boxes, 0, 0, width, height)
    features = [{"type": "Feature", "geometry": shapely.geometry.mapping(box),
                 "properties": {"objectType": "detection", "name": f"cell r{r} c{c}",
                                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                                "measurements": {"P(tumour)": round(float(p), 4)}}}
                for box, r, c, p in zip(boxes, hot["row"], hot["col"], hot["prob"], strict=True)]
    regions = shapely.union_all(boxes) if len(boxes) else shapely.Polygon()
    for i, region in enumerate(getattr(regions, "geoms", [regions])):
        if region.is_empty:
            continue
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(region),
                         "properties": {"objectType": "annotation", "name": f"tumour region {i + 1}",
                                        "classification": {"name": "Tumor", "color": [200, 0, 0]},
                                        "measurements": {"area (level-0 px^2)": float(region.area)}}})
    return {"type": "FeatureCollection", "features": features}


def write_outputs(slide_map: SlideMap, thumbnail: np.ndarray, down: float) -> None:
    """cells.csv, overlay.png and cells.geojson into the map's folder."""
    folder = slide_map.folder
    with atomic_write(folder / "cells.csv") as tmp:
        slide_map.cells().to_csv(tmp, index=False)
    overlay_png(slide_map, thumbnail, down, folder / "overlay.png")
    write_text(folder / "cells.geojson", json.dumps(geojson(slide_map)))


def export_cells(windows: dict[str, np.ndarray], labels: dict[str, int], out: str | Path) -> dict:
    """Writes cells as a Kaggle-layout patch dataset that `open_dataset` and `train` read as it is.

    Args:
        windows: patch id -> (96, 96, 3) uint8 window.
        labels: patch id -> 0/1 for the cells whose label is known (reviewed); they go to train/, the
            others to test/ (listed in sample_submission.csv, to be predicted).
        out: a new or empty folder.

    Returns:
        dict with n_train, n_test and the folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose a new folder for the export")
    if not windows:
        raise ValueError("no cells to export: review some cells or choose top cells first")
    train = {k: v for k, v in labels.items() if k in windows}
    for split, ids in (("train", sorted(train)), ("test", sorted(set(windows) - set(train)))):
        (out / split).mkdir(parents=True, exist_ok=True)
        for pid in ids:
            tifffile.imwrite(out / split / f"{pid}.tif", windows[pid], photometric="rgb")
    pd.DataFrame({"id": sorted(train), "label": [train[k] for k in sorted(train)]}).to_csv(
        out / "train_labels.csv", index=False)
    test = sorted(set(windows) - set(train))
    pd.DataFrame({"id": test, "label": 0}).to_csv(out / "sample_submission.csv", index=False)
    return {"n_train": len(train), "n_test": len(test), "folder": str(out)}
