"""What a reviewer finds and draws on a slide map: hot spots ranked, drawn regions kept in the review store
(append-only, taken back by a row of their own), the cells they label by PCam's rule, and the QuPath
GeoJSON they go out as."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest

from pcam_core.review import regions
from pcam_core.review.verdicts import ReviewStore
from pcam_core.slides.annotations import read_geojson
from pcam_core.slides.reader import Grid
from pcam_core.slides.regions import hot_spots, region_labels, regions_geojson

GRID = Grid(stride=32, rows=10, cols=12, scale=1.0)  # 32 level-0 px per cell


def test_hot_spots_are_connected_cells_above_the_threshold_ranked_by_peak():
    prob = np.full((10, 12), 0.1)
    prob[1:3, 1:4] = 0.8  # 6 cells, peak 0.8
    prob[6, 6], prob[7, 7] = 0.95, 0.6  # diagonal neighbours: one spot of 2 cells
    prob[9, 11] = 0.7
    prob[0, 11] = np.nan  # not scored: never a hot spot
    spots = hot_spots(prob, GRID, mpp=0.25, threshold=0.5)
    assert [(s.peak, s.cells) for s in spots] == [(0.95, 2), (0.8, 6), (0.7, 1)]
    top = spots[0]
    assert (top.row, top.col) == (6, 6) and top.box == (192, 192, 64, 64)
    assert top.area_mm2 == pytest.approx(2 * (32 * 0.25 / 1000) ** 2)
    assert sorted(top.members.tolist()) == [6 * 12 + 6, 7 * 12 + 7]
    assert hot_spots(prob, GRID, 0.25, threshold=0.99) == []
    assert len(hot_spots(prob, GRID, 0.25, threshold=0.5, limit=2)) == 2


def square(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_drawn_regions_label_cells_by_pcams_rule_and_a_conflict_is_left_out():
    # centre 32 x 32 of cell (r, c) at stride 32: the cell itself, [32c, 32c + 32) x [32r, 32r + 32)
    tumour = SimpleNamespace(kind="tumour", points=square(40, 40, 60, 60))  # inside cell (1, 1) only
    normal = SimpleNamespace(kind="normal", points=square(128, 0, 256, 96))  # cells r0-2, c4-7 wholly
    table = region_labels(GRID, [tumour, normal])
    cells = {(r, c): label for r, c, label in table.itertuples(index=False)}
    assert cells[(1, 1)] == 1 and sum(cells.values()) == 1  # a tumour touch is enough (PCam's rule)
    assert {k for k, v in cells.items() if v == 0} == {(r, c) for r in range(3) for c in range(4, 8)}
    edge = SimpleNamespace(kind="normal", points=square(130, 0, 256, 96))  # cuts into column 4: not wholly
    assert (0, 4) not in set(map(tuple, region_labels(GRID, [edge])[["row", "col"]].values.tolist()))
    both = SimpleNamespace(kind="tumour", points=square(200, 40, 210, 50))  # in cell (1, 6), inside normal
    table = region_labels(GRID, [normal, both])
    assert (1, 6) not in set(map(tuple, table[["row", "col"]].values.tolist()))  # conflict: left out
    assert region_labels(GRID, []).empty


def test_regions_are_kept_per_reviewer_and_taken_back_without_losing_a_row(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite")
    first = regions.add(store, "slide:a", "tumour", square(0, 0, 100, 100), "Dr Ann")
    second = regions.add(store, "slide:a", "normal", [[200, 0], [300, 0], [300.5, 90]], "Dr Ben")
    regions.add(store, "slide:b", "tumour", square(0, 0, 5, 5), "Dr Ann")
    now = regions.current(store, "slide:a")
    assert [(r.seq, r.kind, r.reviewer) for r in now] == [(first, "tumour", "Dr Ann"),
                                                          (second, "normal", "Dr Ben")]
    assert now[1].points == [(200, 0), (300, 0), (300.5, 90)]
    regions.remove(store, "slide:a", first, "Dr Ben")
    assert [r.seq for r in regions.current(store, "slide:a")] == [second]
    with sqlite3.connect(store.path) as con:  # the removed region and who removed it stay in the store
        kinds = [k for (k,) in con.execute("SELECT kind FROM regions WHERE dataset = 'slide:a' ORDER BY seq")]
    assert kinds == ["tumour", "normal", "removed"]
    with pytest.raises(ValueError, match="not on this slide"):
        regions.remove(store, "slide:a", first, "Dr Ben")
    for kind, points, reviewer, message in [
            ("cancer", square(0, 0, 1, 1), "Dr Ann", "one of"),
            ("tumour", [(0, 0), (1, 1)], "Dr Ann", "3 to"),
            ("tumour", [(0, 0), (1, "x"), (2, 2)], "Dr Ann", "pairs of numbers"),
            ("tumour", [(0, 0), (1, float("nan")), (2, 2)], "Dr Ann", "finite"),
            ("tumour", square(0, 0, 1, 1), " ", "reviewer name")]:
        with pytest.raises(ValueError, match=message):
            regions.add(store, "slide:a", kind, points, reviewer)
    assert len(regions.current(store, "slide:a")) == 1  # nothing half-written


def test_drawn_regions_go_out_as_qupath_annotations_clipped_to_the_slide(tmp_path):
    drawn = [SimpleNamespace(kind="tumour", points=square(100, 100, 400, 300), reviewer="Dr Ann",
                             created="2026-12-06T10:00:00"),
             SimpleNamespace(kind="normal", points=square(900, 500, 1200, 800), reviewer="Dr Ben",
                             created="2026-12-06T10:01:00")]
    features = regions_geojson(drawn, (1000, 700))
    assert [f["properties"]["classification"]["name"] for f in features] == ["Tumor", "Normal"]
    assert all(f["properties"]["objectType"] == "annotation" for f in features)
    path = tmp_path / "drawn.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    back = read_geojson(path)  # read back as QuPath would hand it over: the tumour, the slide's edge kept
    assert back.tumour.area == pytest.approx(300 * 200) and back.skipped == 1  # "Normal" is not tumour
    assert features[1]["geometry"]["coordinates"][0] and \
        max(x for x, _ in features[1]["geometry"]["coordinates"][0]) == 1000
