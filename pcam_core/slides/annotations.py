"""Tumour outlines a pathologist drew, read in, and the cell labels they give by PCam's own rule.

Read: QuPath GeoJSON (a FeatureCollection, a Feature, or QuPath's older list of Features; Polygon and
MultiPolygon with holes; the class from `properties.classification.name`) and ASAP XML (Camelyon16:
groups `_0`, `_1`, `Tumor` are tumour, `_2`, `Exclusion` are left out). Class names count as tumour when
they say so (Tumor, Tumour, Metastasis), as exclusion for Exclusion and QuPath's Ignore*; other classes
are skipped and counted. Polygons that cross themselves are repaired with shapely's `make_valid`.
Coordinates are level-0 pixels of the slide.

The tumour is the tumour polygons minus the exclusions. A cell is tumour (label 1) when the centre
32 x 32 model pixels of its window overlap the tumour with some area (an edge shared is not enough),
PCam's own rule; a cell whose centre lies in an exclusion is left out, as are cells without tissue.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import shape

from pcam_core.slides.reader import MIN_TISSUE, Grid

TUMOUR_CLASSES = {"tumor", "tumour", "metastasis", "metastases", "_0", "_1"}
EXCLUSION_CLASSES = {"exclusion", "_2", "ignore"}
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
CENTRE_MODEL_PX = 32
LABEL_COLUMNS = ["row", "col", "x", "y", "size", "label"]


@dataclass
class Annotations:
    """The outlines of one slide: `tumour` (minus the exclusions) and `exclusion`, shapely geometries."""

    source: Path
    tumour: shapely.Geometry
    exclusion: shapely.Geometry
    repaired: int = 0  # polygons that crossed themselves, repaired
    skipped: int = 0  # features of another class or kind (points, lines)

    def check_fits(self, size: tuple[int, int], name: str) -> None:
        """ValueError when the outlines reach well past a slide of `size` (w, h): drawn on another slide."""
        if self.tumour.is_empty and self.exclusion.is_empty:
            return
        x0, y0, x1, y1 = shapely.union(self.tumour, self.exclusion).bounds
        w, h = size
        slack = 0.02 * max(w, h)  # outlines drawn a little past the edge are clipped, not refused
        if x0 < -slack or y0 < -slack or x1 > w + slack or y1 > h + slack:
            raise ValueError(f"{self.source.name} has outlines out to ({x1:,.0f}, {y1:,.0f}) px but {name} "
                             f"is {w:,} x {h:,} px: it was drawn on another slide (or at another level); "
                             "give the annotations of this slide, in level-0 pixels")


def _class_of(name: str | None) -> str | None:
    key = (name or "").strip().rstrip("*").casefold()
    return "tumour" if key in TUMOUR_CLASSES else "exclusion" if key in EXCLUSION_CLASSES else None


def _valid(geometry: shapely.Geometry) -> tuple[shapely.Geometry, bool]:
    if geometry.is_valid:
        return geometry, False
    return shapely.make_valid(geometry), True


def _collect(source: Path, parts: list[tuple[str | None, shapely.Geometry | None]]) -> Annotations:
    groups: dict[str, list] = {"tumour": [], "exclusion": []}
    repaired = skipped = 0
    for name, geometry in parts:
        kind = _class_of(name)
        if kind is None or geometry is None or geometry.geom_type not in ("Polygon", "MultiPolygon"):
            skipped += 1
            continue
        geometry, fixed = _valid(geometry)
        repaired += fixed
        groups[kind].append(geometry)
    exclusion = shapely.union_all(groups["exclusion"]) if groups["exclusion"] else shapely.Polygon()
    tumour = shapely.union_all(groups["tumour"]) if groups["tumour"] else shapely.Polygon()
    areal = [g for g in getattr(tumour.difference(exclusion), "geoms", [tumour.difference(exclusion)])
             if g.geom_type in ("Polygon", "MultiPolygon")]
    return Annotations(source, shapely.union_all(areal) if areal else shapely.Polygon(), exclusion, repaired,
                       skipped)


def read_geojson(path: Path) -> Annotations:
    """A slide's outlines from QuPath GeoJSON (ValueError naming the file when it is not that)."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path.name} is not GeoJSON ({e}); export the annotations from QuPath as GeoJSON") \
            from e
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data  # QuPath before 0.4 wrote a bare list of Features
    else:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path.name} is GeoJSON of type {kind!r}, not a FeatureCollection of annotated "
                         "polygons; export the annotations from QuPath (File > Export objects as GeoJSON)")
    if not isinstance(features, list) or not all(isinstance(f, dict) and f.get("type") == "Feature"
                                                  for f in features):
        raise ValueError(f"{path.name}: its features are not a list of GeoJSON Features; export the "
                         "annotations from QuPath as GeoJSON")
    parts = []
    for feature in features:
        props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        cls = props.get("classification")
        name = cls.get("name") if isinstance(cls, dict) else cls if isinstance(cls, str) else None
        try:
            geometry = shape(feature["geometry"]) if feature.get("geometry") else None
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException):
            geometry = None  # not a geometry shapely reads: counted as skipped
        parts.append((name, geometry))
    return _collect(path, parts)


def read_asap(path: Path) -> Annotations:
    """A slide's outlines from ASAP XML, Camelyon16's format (ValueError naming the file when it is not)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path.name} is not XML ({e}); give an ASAP annotation file") from e
    if root.tag != "ASAP_Annotations":
        raise ValueError(f"{path.name} is XML with root <{root.tag}>, not an ASAP annotation file "
                         "(<ASAP_Annotations>); give a Camelyon16-style XML or QuPath GeoJSON")
    parts = []
    for annotation in root.iter("Annotation"):
        try:
            points = sorted(((int(c.get("Order", i)), float(c.get("X")), float(c.get("Y")))
                             for i, c in enumerate(annotation.iter("Coordinate"))), key=lambda p: p[0])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path.name}: annotation {annotation.get('Name')!r} has a coordinate that is "
                             f"not a number ({e}); ASAP writes X=\"123.4\" Y=\"567.8\"") from e
        ok = annotation.get("Type", "Polygon") in ("Polygon", "Spline", "Rectangle") and len(points) >= 3
        parts.append((annotation.get("PartOfGroup"), shapely.Polygon([(x, y) for _, x, y in points])
                      if ok else None))
    return _collect(path, parts)


def read_annotations(path: str | Path) -> Annotations:
    """A slide's outlines from QuPath GeoJSON (.geojson / .json) or ASAP XML (.xml)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    if path.suffix.lower() == ".xml":
        return read_asap(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return read_geojson(path)
    raise ValueError(f"{path.name}: annotations are read from QuPath GeoJSON (.geojson) or ASAP XML (.xml)")


def annotation_for(slide: Path, folder: Path) -> Path | None:
    """The annotation file in `folder` named after `slide` (tumor_001.tif -> tumor_001.xml), if any."""
    for suffix in ANNOTATION_SUFFIXES:
        if (folder / f"{slide.stem}{suffix}").is_file():
            return folder / f"{slide.stem}{suffix}"
    return None


def centre_boxes(grid: Grid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Level-0 boxes of the centre 32 x 32 model pixels of the cells' windows (at stride 32: the cells)."""
    half = CENTRE_MODEL_PX / 2 * grid.scale
    cx = (np.asarray(cols) + 0.5) * grid.cell_size
    cy = (np.asarray(rows) + 0.5) * grid.cell_size
    return shapely.box(cx - half, cy - half, cx + half, cy + half)


def cell_labels(grid: Grid, annotations: Annotations, tissue: np.ndarray | None = None,
                min_tissue: float = MIN_TISSUE) -> pd.DataFrame:
    """PCam's label of every cell with tissue: LABEL_COLUMNS (x, y, size: the cell's level-0 box)."""
    rows, cols = np.nonzero(np.ones((grid.rows, grid.cols), bool) if tissue is None else tissue >= min_tissue)
    boxes = centre_boxes(grid, rows, cols)
    tumour = annotations.tumour
    shapely.prepare(tumour)
    touching = shapely.intersects(tumour, boxes)
    label = np.zeros(len(boxes), np.int64)
    if touching.any():
        label[touching] = shapely.area(shapely.intersection(boxes[touching], tumour)) > 0
    centres = shapely.centroid(boxes)
    kept = ~shapely.within(centres, annotations.exclusion) if not annotations.exclusion.is_empty else \
        np.ones(len(boxes), bool)
    x, y, size = grid.cell_box(rows, cols)
    table = pd.DataFrame({"row": rows, "col": cols, "x": x, "y": y, "size": size, "label": label})
    return table[kept].reset_index(drop=True)


def longest_axis(geometry: shapely.Geometry) -> float:
    """Level-0 pixels along the longest side of the smallest rectangle around `geometry`."""
    rect = shapely.minimum_rotated_rectangle(geometry)
    xy = np.asarray(rect.exterior.coords) if rect.geom_type == "Polygon" else np.zeros((1, 2))
    return max((math.dist(a, b) for a, b in zip(xy[:-1], xy[1:], strict=True)), default=0.0)
