"""Cache wrappers and the map figure for the Slides page (pcam_core never imports Streamlit)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from app.widgets import ui
from pcam_core.geometry import PATCH
from pcam_core.inference.infer import precision_used
from pcam_core.slides.cache import MapSettings, SlideMap, load_map, map_dir
from pcam_core.slides.export import cell_id, export_cells, parse_cell_id, reviewed_labels
from pcam_core.slides.maps import cell_patch, tissue_fraction
from pcam_core.slides.reader import MIN_TISSUE, Grid, Slide, list_slides, open_slide

REPO = Path(__file__).resolve().parents[2]
CELL_TRACE = 3  # the clickable markers: after the thumbnail, the heat map and the contour
# P(tumour) from clear to inferno's yellow: low-P tissue stays visible under the map, hot spots stand out
HEAT_SCALE = [[0.0, "rgba(0,0,4,0.08)"], [0.25, "rgba(87,16,110,0.35)"], [0.5, "rgba(188,55,84,0.65)"],
              [0.75, "rgba(249,142,9,0.85)"], [1.0, "rgba(252,255,164,0.95)"]]
IN_PROCESS_CELLS = 1500  # up to this many cells x TTA views a map is scored in the page; beyond, as a job


def slide_folders() -> dict[str, Path]:
    """The folders offered: the demo set's slides, the shared example slides, when present."""
    found = {}
    data = os.environ.get("PCAM_DATA")
    if data and Path(data, "slides").is_dir():
        found["Demo slide"] = Path(data, "slides")
    examples = os.environ.get("PCAM_SLIDES_DIR") or REPO.parent / "shared" / "data" / "slides"
    if Path(examples).is_dir():
        found["Example slides"] = Path(examples)
    return found


@st.cache_data(show_spinner=False, ttl=30)
def slides_in(folder: str) -> list[str]:
    return [str(p) for p in list_slides(folder)]


@st.cache_resource(show_spinner=False, max_entries=8)
def _open(path: str, mtime: float, mpp: float | None) -> Slide:
    return open_slide(path, mpp)


def open_cached(path: str, mpp: float | None) -> Slide:
    """The slide, opened once per file version and scale (ValueError/OSError for a bad file)."""
    return _open(path, Path(path).stat().st_mtime, mpp)


@st.cache_data(show_spinner="Finding tissue...", max_entries=16)
def tissue(path: str, mtime: float, mpp: float | None, stride: int) -> np.ndarray:
    slide = open_cached(path, mpp)
    return tissue_fraction(slide, Grid.of(slide, stride))


@st.cache_data(show_spinner=False, max_entries=8)
def thumbnail_uri(path: str, mtime: float, mpp: float | None) -> tuple[str, float, tuple[int, int]]:
    """The thumbnail as a JPEG data URI, its level-0 pixels per pixel, and its size."""
    image, down = open_cached(path, mpp).thumbnail(1600)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), down, image.shape[:2]


@st.cache_data(show_spinner=False, max_entries=256)
def window(path: str, mtime: float, mpp: float | None, stride: int, row: int, col: int) -> np.ndarray:
    slide = open_cached(path, mpp)
    return cell_patch(slide, Grid.of(slide, stride), row, col)


def settings_for(stride: int, tta: int, mpp: float | None) -> MapSettings:
    return MapSettings(stride, tta, mpp, MIN_TISSUE, precision_used("auto", ui.device_spec()))


def map_folder(slide_path: str, run: Path, settings: MapSettings) -> Path:
    return map_dir(slide_path, [run], settings)


def read_map(folder: Path) -> SlideMap | None:
    try:
        return load_map(folder)
    except ValueError as e:
        st.error(str(e))
        return None


def map_figure(slide_map: SlideMap, uri: str, down: float, thumb_size: tuple[int, int], opacity: float,
               threshold: float, selected: tuple[int, int] | None, outlines: list | None = None) -> go.Figure:
    """The thumbnail with the map over it (level-0 pixel axes), the threshold's contour, a clickable
    marker on every scored cell, and a pathologist's `outlines` (traces drawn after the cells')."""
    size = slide_map.grid.cell_size  # level-0 pixels per cell
    rows, cols = slide_map.prob.shape
    centres_x, centres_y = (np.arange(cols) + 0.5) * size, (np.arange(rows) + 0.5) * size
    fig = go.Figure()
    fig.add_trace(go.Image(source=uri, x0=down / 2, y0=down / 2, dx=down, dy=down, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=slide_map.prob, x=centres_x, y=centres_y, zmin=0, zmax=1,
                             colorscale=HEAT_SCALE, opacity=opacity, hoverinfo="skip",
                             colorbar=dict(title="P(tumour)", thickness=14, len=0.8)))
    fig.add_trace(go.Contour(z=np.nan_to_num(slide_map.prob, nan=0.0), x=centres_x, y=centres_y,
                             contours=dict(start=threshold, end=threshold, size=1, coloring="none"),
                             line=dict(color="#00E5FF", width=2), showscale=False, hoverinfo="skip",
                             name=f"P = {threshold:.2f}"))
    r, c = np.nonzero(np.isfinite(slide_map.prob))
    height = 640
    marker = max(4, min(30, height / max(rows, 1) * 0.9))
    fig.add_trace(go.Scattergl(x=centres_x[c], y=centres_y[r], mode="markers",
                               customdata=np.column_stack([r, c, slide_map.prob[r, c]]),
                               marker=dict(size=marker, symbol="square", opacity=0.01, color="white"),
                               hovertemplate="cell r%{customdata[0]} c%{customdata[1]}<br>"
                                             "P(tumour) %{customdata[2]:.3f}<extra></extra>"))
    for trace in outlines or []:
        fig.add_trace(trace)
    if selected is not None:
        fig.add_shape(type="rect", x0=selected[1] * size, x1=(selected[1] + 1) * size, y0=selected[0] * size,
                      y1=(selected[0] + 1) * size, line=dict(color="#FFDC00", width=3))
    h, w = thumb_size
    fig.update_xaxes(range=[0, w * down], showgrid=False, title="level-0 x (px)")
    fig.update_yaxes(range=[h * down, 0], showgrid=False, scaleanchor="x", title="level-0 y (px)")
    fig.update_layout(height=height, margin=dict(t=10, b=10, l=10, r=10), showlegend=False,
                      clickmode="event+select", dragmode="zoom")
    return fig


def clicked_cell(event, slide_map: SlideMap) -> tuple[int, int] | None:
    """The (row, col) of the cell a click on the map chose, if any (the markers are the scored cells in
    `np.nonzero` order, as `map_figure` draws them)."""
    points = (event or {}).get("selection", {}).get("points", [])
    for point in points:
        if point.get("curve_number") == CELL_TRACE and point.get("point_index") is not None:
            rows, cols = np.nonzero(np.isfinite(slide_map.prob))
            i = int(point["point_index"])
            if i < len(rows):
                return int(rows[i]), int(cols[i])
    return None


def export(slide: Slide, slide_map: SlideMap, verdicts, top: int, target: str) -> dict:
    """The slide's reviewed cells (labelled by their verdicts) and its `top` highest unreviewed cells as a
    Kaggle-layout folder at `target`."""
    labels = reviewed_labels(verdicts)
    windows = {}
    for patch in verdicts["patch_id"]:
        x, y, _ = parse_cell_id(patch)
        windows[patch] = slide.read(x / slide.scale, y / slide.scale, PATCH, PATCH)
    grid = slide_map.grid
    order = np.argsort(-np.nan_to_num(slide_map.prob, nan=-1.0), axis=None)
    for flat in order[: top + len(windows)]:
        row, col = divmod(int(flat), grid.cols)
        patch = cell_id(slide.name, *grid.window_box(row, col))
        if len(windows) - len(verdicts) >= top or not np.isfinite(slide_map.prob[row, col]):
            break
        if patch not in windows:
            windows[patch] = cell_patch(slide, grid, row, col)
    return export_cells(windows, labels, target)
