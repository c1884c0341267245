"""Cache wrappers, drawn regions and Export for the Slides page (pcam_core never imports Streamlit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.widgets import reviews, ui
from pcam_core.geometry import PATCH
from pcam_core.inference.infer import precision_used
from pcam_core.review import regions
from pcam_core.review.agreement import settled_labels
from pcam_core.review.regions import Region
from pcam_core.slides.cache import MapSettings, SlideMap, keep_scale, load_map, map_dir, typed_scale
from pcam_core.slides.export import cell_id, export_cells, parse_cell_id
from pcam_core.slides.maps import cell_patch, tissue_fraction
from pcam_core.slides.reader import MIN_TISSUE, Grid, Slide, list_slides, open_slide
from pcam_core.slides.regions import region_labels, regions_geojson

REPO = Path(__file__).resolve().parents[2]
COMMON_SCALES = ((0.25, "40x"), (0.5, "20x"), (1.0, "10x"))
IN_PROCESS_CELLS = 1500  # up to this many cells x TTA views a map is scored in the page; beyond, as a job


def scale_of(path: str) -> None:
    """Sets the scale field to what was typed for `path` when the slide changed (or on a first visit whose
    URL names none): each slide keeps its own typed scale, kept beside its maps."""
    state = st.session_state
    before = state.get("slides_mpp_for")
    if before is None:
        if "slides_mpp" not in st.query_params and (typed := typed_scale(path)) is not None:
            state["slides_mpp"] = typed
    elif before != path:
        state["slides_mpp"] = typed_scale(path)
    state["slides_mpp_for"] = path


def keep_typed_scale(path: str, value: float | None = None) -> None:
    """Remembers the scale typed (or picked) for this slide; an empty field forgets it."""
    if value is not None:
        st.session_state["slides_mpp"] = value
    try:
        keep_scale(path, st.session_state.get("slides_mpp"))
    except OSError as e:
        st.session_state["slides_scale_error"] = f"The scale is used but could not be kept: {e}"


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


def drawn_regions(slide_key: str) -> list[Region]:
    """The regions reviewers drew on the slide ([] when the store cannot be read: the page says why)."""
    try:
        return regions.current(reviews.review_store(), slide_key)
    except (ValueError, OSError) as e:
        st.error(f"The drawn regions cannot be read: {e} (verdict store: {reviews.review_db()}).")
        return []


def keep_region(slide_key: str, region: dict, reviewer: str) -> None:
    """Stores a region the viewer closed, then reruns so it shows; one line when it cannot be kept."""
    kind = {"tumour": "tumour", "normal": "not tumour"}.get(region.get("kind"), "region")
    try:
        regions.add(reviews.review_store(), slide_key, region.get("kind"), region.get("points", []), reviewer)
    except (ValueError, OSError) as e:
        st.error(f"The {kind} region was not kept: {e}.")
        return
    st.toast(f"Kept: a {kind} region", icon=":material/check:")
    st.rerun()


def region_table(slide_key: str, drawn: list[Region], slide_map: SlideMap, reviewer: str) -> None:
    """The drawn regions, the cells they label, and a way to take one back."""
    if not drawn:
        st.caption("None yet. Draw tumour the model missed, or tissue that is not tumour, with the viewer's "
                   "Draw buttons: Export labels the cells inside (tumour: the centre 32x32 touches it, as "
                   "PCam labels; not tumour: the centre 32x32 lies inside it), and the GeoJSON carries them.")
        return
    labels = region_labels(slide_map.grid, drawn)
    st.dataframe(pd.DataFrame({"#": [r.seq for r in drawn],
                               "kind": ["tumour" if r.kind == "tumour" else "not tumour" for r in drawn],
                               "drawn by": [r.reviewer for r in drawn], "at": [r.created[:16] for r in drawn],
                               "corners": [len(r.points) for r in drawn]}), hide_index=True)
    st.caption(f"They label {int((labels['label'] == 1).sum()):,} cells tumour and "
               f"{int((labels['label'] == 0).sum()):,} not tumour (a cell both would label is left out).")
    cols = st.columns([1, 1, 3])
    seq = cols[0].selectbox("Region", [r.seq for r in drawn], key="slides_region_pick")
    if cols[1].button("Remove", key="slides_region_remove", disabled=not reviewer, icon=":material/delete:"):
        try:
            regions.remove(reviews.review_store(), slide_key, int(seq), reviewer)
        except (ValueError, OSError) as e:
            st.error(f"Not removed: {e}.")
        else:
            st.rerun()


def regions_download(slide_map: SlideMap, drawn: list[Region], size: tuple[int, int]) -> bytes:
    """cells.geojson of the map with the drawn regions added as QuPath annotations."""
    collection = json.loads((slide_map.folder / "cells.geojson").read_text())
    collection["features"] = [*collection.get("features", []), *regions_geojson(drawn, size)]
    return json.dumps(collection).encode()


def export(slide: Slide, slide_map: SlideMap, history, drawn: list[Region], top: int, target: str) -> dict:
    """The slide's reviewed cells (labelled by their verdicts, else by the regions drawn around them, tissue
    cells only) and its `top` highest unreviewed cells as a Kaggle-layout folder at `target`."""
    settled = settled_labels(history)  # every reviewer's latest answer; a tie is left out, unsure is none
    labels = dict(zip(settled["id"], settled["label"].astype(int), strict=True))
    labels = {patch: label for patch, label in labels.items() if label >= 0}
    reviewed_ids = set(history["patch_id"])
    windows = {}
    for patch in labels:
        x, y, _ = parse_cell_id(patch)
        windows[patch] = slide.read(x / slide.scale, y / slide.scale, PATCH, PATCH)
    grid = slide_map.grid
    for row, col, label in region_labels(grid, drawn).itertuples(index=False):
        patch = cell_id(slide.name, *grid.window_box(row, col))
        if patch not in reviewed_ids and np.isfinite(slide_map.prob[row, col]):  # tissue; verdicts first
            labels[patch] = int(label)
            windows[patch] = cell_patch(slide, grid, row, col)
    reviewed = len(windows)
    order = np.argsort(-np.nan_to_num(slide_map.prob, nan=-1.0), axis=None)
    for flat in order[: top + len(windows)]:
        row, col = divmod(int(flat), grid.cols)
        patch = cell_id(slide.name, *grid.window_box(row, col))
        if len(windows) - reviewed >= top or not np.isfinite(slide_map.prob[row, col]):
            break
        if patch not in windows and patch not in reviewed_ids:  # a tie is not "unreviewed"
            windows[patch] = cell_patch(slide, grid, row, col)
    return export_cells(windows, labels, target)
