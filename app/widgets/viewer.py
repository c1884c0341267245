"""The slide viewer on the Slides page: OpenSeadragon over the app's own tiles (`app.compute.tiles`), the
tumour map, verdict marks, hot spots and drawn regions drawn in the browser (app/components/viewer.js).

Pan, zoom, opacity and the map on/off never rerun the page; a click on a cell (`result.cell`) and a region
closed (`result.region`) do. The viewer's tiles need the app served with its routes (`streamlit run
app/server.py`, as `make run` does); without them the page says so.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pcam_core.slides.export import parse_cell_id
from pcam_core.slides.maps import SlideMap
from pcam_core.slides.reader import Slide

HERE = Path(__file__).resolve().parents[1] / "components"
HEIGHT = 720
_COMPONENT = st.components.v2.component("pcam_review.slide_viewer", js=(HERE / "viewer.js").read_text(),
                                        css=(HERE / "viewer.css").read_text(), isolate_styles=False)


def marks(verdicts, slide_map: SlideMap) -> list[list]:
    """[row, col, verdict] of each cell with a current verdict (its window's origin names the cell)."""
    grid, out = slide_map.grid, []
    for patch, verdict in zip(verdicts["patch_id"], verdicts["verdict"], strict=True):
        try:
            x, y, _ = parse_cell_id(patch)
        except ValueError:
            continue
        row = round((y / grid.scale + grid.pad) / grid.stride)
        col = round((x / grid.scale + grid.pad) / grid.stride)
        if 0 <= row < grid.rows and 0 <= col < grid.cols:
            out.append([row, col, verdict])
    return out


def view_from_url() -> dict | None:
    """The view a reload or a bookmark returns to (`?view=x,y,zoom`, written by the viewer itself)."""
    try:
        x, y, zoom = (float(v) for v in st.query_params.get("view", "").split(","))
    except ValueError:
        return None
    return {"x": x, "y": y, "zoom": zoom} if zoom > 0 else None


def slide_viewer(urls: tuple[str, str], slide: Slide, slide_map: SlideMap, threshold: float,
                 selected: tuple[int, int] | None, verdict_marks: list, regions: list, spots: list,
                 outlines: list):
    """Mounts the viewer of the slide's tiles and map at `urls` (`app.compute.tiles.offer`); returns its
    result (`.cell`: {row, col} clicked, `.region`: {kind, points})."""
    reviewed = {r * slide_map.grid.cols + c for r, c, _ in verdict_marks}
    data = {
        "dzi": urls[0], "map": urls[1],
        "rows": int(slide_map.prob.shape[0]), "cols": int(slide_map.prob.shape[1]),
        "cell": float(slide_map.grid.cell_size), "mpp": float(slide.mpp), "threshold": float(threshold),
        "selected": list(selected) if selected else None, "marks": verdict_marks, "height": HEIGHT,
        "regions": [{"seq": r.seq, "kind": r.kind, "points": r.points} for r in regions],
        "hotspots": [{"peak": s.peak, "cells": s.cells, "area": s.area_mm2, "row": s.row, "col": s.col,
                      "x": float(s.box[0]), "y": float(s.box[1]), "w": float(s.box[2]), "h": float(s.box[3]),
                      "reviewed": bool(reviewed.intersection(s.members.tolist()))} for s in spots],
        "outlines": outlines, "view": view_from_url(),
    }
    return _COMPONENT(data=data, key="slides_viewer", height=HEIGHT + 40, on_cell_change=lambda: None,
                      on_region_change=lambda: None)
