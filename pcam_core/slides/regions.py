"""Places on a slide map a reviewer goes to: hot spots (connected cells above a threshold, ranked) and the
regions reviewers drew, as cell labels (PCam's rule) and as QuPath annotations.

A hot spot is a connected group (8-neighbours) of scored cells at P >= threshold, ranked by its peak P and
then its area. Its box and area are in level-0 pixels and mm^2 of the slide.

A drawn region labels cells by PCam's own rule: a cell whose centre 32 x 32 overlaps a "tumour" region
with some area is 1; a cell whose centre 32 x 32 lies wholly inside a "not tumour" region is 0; a cell
both would label is a conflict and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage

from pcam_core.slides.annotations import centre_boxes
from pcam_core.slides.reader import Grid

QUPATH_CLASSES = {"tumour": ("Tumor", -3670016), "normal": ("Normal", -16744448)}  # name, QuPath's colour


@dataclass(frozen=True)
class HotSpot:
    peak: float  # the highest P in it
    row: int  # its peak cell
    col: int
    cells: int
    area_mm2: float
    box: tuple[float, float, float, float]  # level-0 x, y, width, height
    members: np.ndarray  # flat indices (row * cols + col) of its cells


def hot_spots(prob: np.ndarray, grid: Grid, mpp: float, threshold: float, limit: int = 50) -> list[HotSpot]:
    """The `limit` highest-ranked hot spots of a map (P per cell, NaN where unscored) at `threshold`."""
    above = np.nan_to_num(prob, nan=-1.0) >= threshold
    labels, count = ndimage.label(above, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    flat = labels.ravel()
    values = np.nan_to_num(prob, nan=-1.0).ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(1, count + 1))
    ends = np.append(starts[1:], len(order))
    cell_mm2 = (grid.cell_size * mpp / 1000) ** 2
    spots = []
    for start, end in zip(starts, ends, strict=True):
        members = order[start:end]
        rows, cols = np.divmod(members, prob.shape[1])
        best = members[np.argmax(values[members])]
        size = grid.cell_size
        spots.append(HotSpot(float(values[best]), int(best // prob.shape[1]), int(best % prob.shape[1]),
                             len(members), len(members) * cell_mm2,
                             (cols.min() * size, rows.min() * size, (cols.max() - cols.min() + 1) * size,
                              (rows.max() - rows.min() + 1) * size), members))
    spots.sort(key=lambda s: (-s.peak, -s.cells))
    return spots[:limit]


def _union(regions: Sequence, kind: str) -> shapely.Geometry:
    shapes = [shapely.make_valid(shapely.Polygon(r.points)) for r in regions if r.kind == kind]
    return shapely.union_all(shapes) if shapes else shapely.Polygon()


def region_labels(grid: Grid, regions: Sequence) -> pd.DataFrame:
    """Columns row, col, label: the cells the drawn `regions` (with .kind and .points) label."""
    tumour, normal = _union(regions, "tumour"), _union(regions, "normal")
    found = {}
    for kind, area in (("tumour", tumour), ("normal", normal)):
        if area.is_empty:
            continue
        x0, y0, x1, y1 = area.bounds
        size = grid.cell_size
        r0, r1 = max(0, int(y0 // size) - 2), min(grid.rows, int(y1 // size) + 3)
        c0, c1 = max(0, int(x0 // size) - 2), min(grid.cols, int(x1 // size) + 3)
        rows, cols = (a.ravel() for a in np.mgrid[r0:r1, c0:c1])
        boxes = centre_boxes(grid, rows, cols)
        shapely.prepare(area)
        if kind == "tumour":
            hit = shapely.intersects(area, boxes)
            hit[hit] = shapely.area(shapely.intersection(boxes[hit], area)) > 0
        else:
            hit = shapely.contains(area, boxes)
        found[kind] = set(zip(rows[hit].tolist(), cols[hit].tolist(), strict=True))
    ones, zeros = found.get("tumour", set()), found.get("normal", set())
    cells = sorted((ones | zeros) - (ones & zeros))
    return pd.DataFrame({"row": [r for r, _ in cells], "col": [c for _, c in cells],
                         "label": [int((r, c) in ones) for r, c in cells]}, dtype=np.int64)


def regions_geojson(regions: Sequence, size: tuple[int, int]) -> list[dict]:
    """The drawn regions as QuPath annotation Features (level-0 pixels, clipped to the slide of `size`)."""
    slide = shapely.box(0, 0, *size)
    features = []
    for region in regions:
        shape = shapely.make_valid(shapely.Polygon(region.points)).intersection(slide)
        if shape.is_empty or shape.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        name, rgb = QUPATH_CLASSES[region.kind]
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(shape),
                         "properties": {"objectType": "annotation", "name": f"drawn by {region.reviewer}",
                                        "classification": {"name": name, "color": rgb},
                                        "reviewer": region.reviewer, "created": region.created}})
    return features
