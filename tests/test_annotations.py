"""A pathologist's outlines in (QuPath GeoJSON, ASAP XML), PCam's cell labels from them, and tumour maps
scored against them: cells, slides and Camelyon16's lesion-level FROC, each checked on a case worked out
by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from sklearn.metrics import average_precision_score, roc_auc_score

from pcam_core.slides.annotations import cell_labels, read_annotations
from pcam_core.slides.cache import SlideMap
from pcam_core.slides.demo import make_demo_slide, mask_path, outline_path
from pcam_core.slides.evaluate import SlideLesions, evaluate_maps, froc, match_lesions, slide_score
from pcam_core.slides.export import geojson
from pcam_core.slides.maps import tissue_fraction
from pcam_core.slides.reader import Grid, open_slide

pytest_plugins = ["apptest"]  # trained_runs

REPO = Path(__file__).resolve().parents[1]
GRID = Grid(stride=32, rows=4, cols=4, scale=1.0)  # 32 px cells: at stride 32 a cell is its centre 32 x 32


def feature(coords, name, holes=()):
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords, *holes]},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def labels_of(table: pd.DataFrame) -> dict:
    return {(r, c): label for r, c, label in zip(table["row"], table["col"], table["label"], strict=True)}


def test_qupath_geojson_with_a_hole_an_exclusion_and_a_crossed_polygon_gives_the_labels_by_hand(tmp_path):
    path = tmp_path / "slide.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature(square(0, 0, 96, 96), "Tumor", holes=[square(24, 24, 72, 72)]),  # rows and cols 0-2, a hole
        feature(square(64, 64, 96, 96), "Ignore*"),  # cell (2, 2) left out
        feature(square(0, 32, 32, 64), "Stroma"),  # another class: skipped
        feature([[0, 96], [32, 128], [32, 96], [0, 128], [0, 96]], "Tumor"),  # a bow tie over cell (3, 0)
    ]}))
    outlines = read_annotations(path)
    assert (outlines.repaired, outlines.skipped) == (1, 1)
    labels = labels_of(cell_labels(GRID, outlines))
    assert len(labels) == 15 and (2, 2) not in labels
    # (1, 1) lies inside the hole, column 3 shares only an edge with the tumour: no area, no tumour
    assert {cell for cell, label in labels.items() if label == 1} == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 2),
                                                                    (2, 0), (2, 1), (3, 0)}


def test_asap_xml_tumour_groups_and_exclusions_give_the_labels_by_hand(tmp_path):
    def annotation(name, group, box):
        points = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(box[:-1]))
        return (f'<Annotation Name="{name}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
                f"<Coordinates>{points}</Coordinates></Annotation>")

    path = tmp_path / "tumor_001.xml"
    path.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations>'
                    + annotation("Annotation 0", "_0", square(0, 0, 96, 32))
                    + annotation("Annotation 1", "_2", square(32, 0, 64, 32))  # Camelyon16's exclusion
                    + annotation("Annotation 2", "Exclusion", square(64, 64, 96, 96))
                    + '</Annotations><AnnotationGroups><Group Name="_0" PartOfGroup="None"/>'
                    + "</AnnotationGroups></ASAP_Annotations>")
    labels = labels_of(cell_labels(GRID, read_annotations(path)))
    assert len(labels) == 14 and (0, 1) not in labels and (2, 2) not in labels  # exclusions: left out
    assert {cell for cell, label in labels.items() if label == 1} == {(0, 0), (0, 2)}


def test_bad_annotation_files_are_one_clear_error(tmp_path):
    cases = {"point.geojson": json.dumps({"type": "Point", "coordinates": [1, 2]}),
             "notes.geojson": "tumour somewhere on the left",
             "other.xml": "<Annotations><Annotation/></Annotations>",
             "broken.xml": "<ASAP_Annotations><Annotations>",
             "numbers.geojson": json.dumps({"type": "FeatureCollection", "features": [1, 2]}),
             "nothing.geojson": json.dumps({"type": "FeatureCollection", "features": None}),
             "comma.xml": '<ASAP_Annotations><Annotations><Annotation Name="a" PartOfGroup="_0">'
                          '<Coordinates><Coordinate Order="0" X="1,5" Y="2"/></Coordinates></Annotation>'
                          "</Annotations></ASAP_Annotations>",
             "no-y.xml": '<ASAP_Annotations><Annotations><Annotation Name="a" PartOfGroup="_0">'
                         '<Coordinates><Coordinate Order="0" X="1"/></Coordinates></Annotation>'
                         "</Annotations></ASAP_Annotations>"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_annotations(tmp_path / name)
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "FeatureCollection",
                               "features": [feature(square(5000, 5000, 6000, 6000), "Tumor")]}))
    with pytest.raises(ValueError, match="drawn on another slide"):
        read_annotations(far).check_fits((2220, 2967), "CMU-1-Small-Region.svs")


def test_our_own_geojson_of_a_map_reads_back_as_the_same_cells(tmp_path):
    rng = np.random.default_rng(0)
    prob = rng.random((6, 8)).astype(np.float32)
    grid = Grid(stride=32, rows=6, cols=8, scale=1.0)
    meta = {"stride": 32, "scale": 1.0, "size": [256, 192]}
    slide_map = SlideMap(tmp_path, meta, np.ones((6, 8), np.float32), prob, np.zeros((6, 8), bool))
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps(geojson(slide_map)))
    labels = cell_labels(grid, read_annotations(path))
    np.testing.assert_array_equal(labels["label"].to_numpy(), (prob[labels["row"], labels["col"]] >= 0.5))


def test_labels_from_the_demo_slides_outline_agree_with_its_mask(tmp_path):
    path = tmp_path / "demo.tif"
    make_demo_slide(path, 1024, 768, seed=5)
    slide = open_slide(path)
    grid = Grid.of(slide, 32)
    labels = cell_labels(grid, read_annotations(outline_path(path)), tissue_fraction(slide, grid))
    mask = np.load(mask_path(path))["mask"]
    padded = np.zeros((grid.rows * 32, grid.cols * 32), bool)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    truth = padded.reshape(grid.rows, 32, grid.cols, 32).any(axis=(1, 3))  # any tumour pixel in the cell
    assert labels["label"].sum() > 10
    np.testing.assert_array_equal(labels["label"].to_numpy(), truth[labels["row"], labels["col"]])


def test_froc_and_slide_scores_match_the_hand_computed_case():
    # slide A: lesion 1 found at 0.9 (and 0.6), lesion 2 at 0.5, false positives 0.8 and 0.3; slide B: none,
    # false positives 0.7 and 0.2. Best sensitivity per false-positive rate: 0 -> 1/2, 0.5 -> 1/2,
    # 1 -> 1, 1.5 -> 1, 2 -> 1; at 1/4, 1/2, 1, 2, 4, 8: 1/2, 1/2, 1, 1, 1, 1
    result = froc([SlideLesions(np.array([0.9, 0.5]), np.array([0.8, 0.3])),
                   SlideLesions(np.zeros(0), np.array([0.7, 0.2]))])
    assert list(result["sensitivity"].values()) == pytest.approx([0.5, 0.5, 1, 1, 1, 1])
    assert result["score"] == pytest.approx(5 / 6) and result["lesions"] == 2
    missed = froc([SlideLesions(np.array([0.9, -np.inf]), np.array([0.8]))])
    assert missed["sensitivity"]["8.0"] == pytest.approx(0.5)  # a missed lesion is never found
    assert slide_score(np.array([0.1, 0.9, np.nan, 0.5])) == 0.9
    assert slide_score(np.array([0.1, 0.9, 0.5]), top_k=2) == pytest.approx(0.7)


def test_detections_count_once_per_lesion_and_isolated_tumour_cells_count_neither_way():
    lesion = shapely.box(0, 0, 1000, 1000)  # 500 um at 0.5 um/px: a lesion
    itc = shapely.box(3000, 3000, 3100, 3100)  # 50 um: isolated tumour cells
    from pcam_core.slides.annotations import Annotations

    outlines = Annotations(Path("a.geojson"), shapely.union_all([lesion, itc]), shapely.Polygon())
    x = np.array([500, 900, 1100, 3050, 5000])  # in, in, within the 75 um margin, in the ITC, outside
    y = np.array([500, 900, 500, 3050, 5000])
    found = match_lesions(x, y, np.array([0.4, 0.95, 0.6, 0.99, 0.3]), outlines, mpp=0.5)
    assert found.hits.tolist() == [0.95]  # one lesion counted, the ITC not a lesion to find
    assert found.false_positives.tolist() == [0.3]  # the ITC's detection is not a false positive


def test_cell_and_slide_metrics_over_constructed_maps(tmp_path):
    from pcam_core.slides.annotations import Annotations

    meta = {"stride": 32, "scale": 1.0, "size": [128, 32], "mpp": 0.972, "slide": "a.tif"}
    tissue, failed = np.ones((1, 4), np.float32), np.zeros((1, 4), bool)
    tumour = SlideMap(tmp_path, meta, tissue, np.array([[0.9, 0.2, 0.6, 0.1]], np.float32), failed)
    clean = SlideMap(tmp_path, {**meta, "slide": "b.tif"}, np.ones((1, 4), np.float32),
                     np.array([[0.3, 0.7, 0.05, 0.1]], np.float32), np.zeros((1, 4), bool))
    outline = Annotations(Path("a.geojson"), shapely.box(0, 0, 32, 32), shapely.Polygon())
    table, summary = evaluate_maps([(tumour, outline), (clean, None)])
    labels = [1, 0, 0, 0, 0, 0, 0, 0]
    probs = [0.9, 0.2, 0.6, 0.1, 0.3, 0.7, 0.05, 0.1]
    assert summary["cell"]["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert summary["cell"]["pr_auc"] == pytest.approx(average_precision_score(labels, probs))
    assert table["score"].tolist() == pytest.approx([0.9, 0.7]) and table["tumour"].tolist() == [1, 0]
    assert summary["slide_roc_auc"] == 1.0


@pytest.mark.slow
def test_slide_labels_and_slide_eval_commands_on_a_demo_slide(trained_runs, tmp_path):
    slides = tmp_path / "slides"
    make_demo_slide(slides / "demo.tif", 768, 512, seed=4)
    run = [sys.executable, "-m", "pcam_core"]
    done = subprocess.run(run + ["slide-labels", "--slide", str(slides / "demo.tif"), "--annotations",
                                 str(outline_path(slides / "demo.tif")), "--stride", "96", "--out",
                                 str(tmp_path / "labels.csv"), "--patches", str(tmp_path / "patches")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert list(labels.columns) == ["row", "col", "x", "y", "size", "label"] and labels["label"].sum() > 0
    written = pd.read_csv(tmp_path / "patches" / "train_labels.csv")
    assert len(written) == len(labels) and written["label"].sum() == labels["label"].sum()
    done = subprocess.run(run + ["slide-eval", "--slides", str(slides), "--annotations", str(slides),
                                 "--checkpoint", str(trained_runs / "tiny"), "--stride", "96", "--out",
                                 str(tmp_path / "eval"), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert 0 <= summary["cell"]["roc_auc"] <= 1 and summary["froc"]["lesions"] >= 1
    assert "FROC" in done.stdout and (tmp_path / "eval" / "slides.csv").is_file()
