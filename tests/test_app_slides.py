"""The Slides page: choose a slide, score it, open a hot spot, give a verdict, export the reviewed cells."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from pcam_core.data.readers import open_dataset
from pcam_core.review import regions
from pcam_core.review.verdicts import ReviewStore
from pcam_core.slides.cache import load_map
from pcam_core.slides.demo import make_demo_slide, make_slide_image
from pcam_core.slides.export import cell_id, parse_cell_id
from pcam_core.slides.reader import Grid, open_slide
from pcam_core.slides.regions import region_labels

pytest_plugins = ["apptest"]


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    make_demo_slide(folder / "demo.tif", 1536, 1024, seed=3)
    return folder


def open_slides(open_app, folder: Path, reviewer: str = ""):
    at = open_app("slides", reviewer=reviewer)
    at.selectbox(key="slides_source").set_value("A folder I type").run()
    at.text_input(key="slides_folder").input(str(folder)).run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_score_open_a_hot_spot_and_record_a_verdict(open_app, with_model, page_text, slide_folder, tmp_path):
    at = open_slides(open_app, slide_folder, reviewer="Dr Ann")
    assert "1,536 x 1,024 px at 0.972 um/px" in page_text(at)
    assert not any("synthetic demo" in w.value for w in at.warning)  # a demo model on a demo slide
    at.button(key="slides_score").click().run()  # small: scored in the page
    assert not at.exception, at.exception
    text = page_text(at)
    assert "cells scored" in text and "at P >= 0.50" in text.replace("≥", ">=")
    viewer = next(e for e in at.get("bidi_component") if e.proto.component_name.endswith("slide_viewer"))
    data = json.loads(viewer.proto.json)
    # the slide's tiles and map come from the app's routes; the demo slide's outline (demo.geojson beside
    # it) is drawn over it, and the map is scored against it
    assert data["dzi"].startswith("/tiles/") and data["map"].startswith("/tiles/maps/")
    assert data["rows"] * data["cols"] == 32 * 48 and data["cell"] == pytest.approx(32.0)
    assert any(ring["kind"] == "outline" for ring in data["outlines"])
    assert data["hotspots"] and data["hotspots"][0]["peak"] > 0.5 and not data["hotspots"][0]["reviewed"]
    assert any(e.label == "Outlines and scores (demo.geojson)" for e in at.expander)
    table = next(f.value for f in at.dataframe if list(f.value.columns) == ["measure", "value"])
    scores = table.set_index("measure")["value"]
    assert float(scores["cell ROC AUC (95% interval)"].split()[0]) > 0.8  # the tiny model finds the tumour
    found, of = scores["lesions found"].split(" of ")
    assert int(of) >= 1 and 0 <= int(found) <= int(of)
    at.button(key="slides_top_0").click().run()  # the hottest cell, as the map's click would choose it
    assert not at.exception, at.exception
    assert "Cell r" in page_text(at)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["P(tumour)"]) > 0.5 and "Centre focus" in metrics  # the panel, CAM too
    note_key = next(t.key for t in at.text_input if t.key.startswith("slides_note_"))
    at.text_input(key=note_key).input("crowded atypical nuclei").run()
    at.button(key="slides_verdict_tumour").click().run()
    assert not at.exception
    assert "Current verdict: tumour by Dr Ann" in page_text(at) and "agrees with the model" in page_text(at)
    rows = ReviewStore(tmp_path / "reviews.sqlite").latest(f"slide:{(slide_folder / 'demo.tif').resolve()}")
    assert len(rows) == 1 and rows["reviewer"].iloc[0] == "Dr Ann"
    assert rows["note"].iloc[0] == "crowded atypical nuclei" and rows["prob"].iloc[0] > 0.5
    x, y, size = parse_cell_id(rows["patch_id"].iloc[0])
    assert size == 96 and x % 32 == 0 and y % 32 == 0  # the window's level-0 place on the slide

    first = next(h.value for h in at.subheader if h.value.startswith("Cell r"))
    at.button(key="slides_next").click().run()  # on to the next hot spot not yet reviewed
    assert not at.exception
    second = next(h.value for h in at.subheader if h.value.startswith("Cell r"))
    assert second != first and "Current verdict" not in page_text(at)

    # a region drawn as "not tumour" around one tissue cell (its centre 32x32 inside, no other's)
    key = f"slide:{(slide_folder / 'demo.tif').resolve()}"
    slide = (slide_folder / "demo.tif").resolve()
    meta = next(m for m in Path(os.environ["PCAM_CACHE_DIR"]).rglob("meta.json")
                if Path(json.loads(m.read_text()).get("slide", "")).resolve() == slide)
    prob = load_map(meta.parent).prob
    row, col = map(int, np.unravel_index(np.nanargmin(prob), prob.shape))  # the lowest P: not the verdict
    corner = [(32 * col - 2, 32 * row - 2), (32 * col + 34, 32 * row - 2), (32 * col + 34, 32 * row + 34),
              (32 * col - 2, 32 * row + 34)]
    regions.add(ReviewStore(tmp_path / "reviews.sqlite"), key, "normal", corner, "Dr Ann")
    drawn = region_labels(Grid.of(open_slide(slide_folder / "demo.tif"), 32),
                          regions.current(ReviewStore(tmp_path / "reviews.sqlite"), key))
    assert drawn.values.tolist() == [[row, col, 0]]
    glass = [(-5, -5), (60, -5), (60, 60), (-5, 60)]  # glass in the corner: no tissue, no label
    regions.add(ReviewStore(tmp_path / "reviews.sqlite"), key, "normal", glass, "Dr Ann")
    at.run()
    assert any(e.label == "Drawn regions (2)" for e in at.expander)
    target = tmp_path / "export"
    at.text_input(key="slides_export_dir").input(str(target)).run()
    at.number_input(key="slides_export_top").set_value(5).run()
    at.button(key="slides_export").click().run()
    assert not at.exception
    labels = pd.read_csv(target / "train_labels.csv")
    assert sorted(labels["label"].tolist()) == [0, 1]  # "Yes", and the region's tissue cell
    exported = open_dataset(target)  # the other pages and `train` read it as it is
    assert len(exported) == 2 + 5 and (exported.labels == 1).sum() == 1
    window = tifffile.imread(target / "train" / f"{labels['id'].iloc[0]}.tif")
    assert window.shape == (96, 96, 3)


def test_a_slide_without_a_scale_asks_for_it(open_app, with_model, page_text, tmp_path):
    image, _ = make_slide_image(600, 400, seed=1)
    tifffile.imwrite(tmp_path / "noscale.tif", image, tile=(256, 256), photometric="rgb")
    at = open_slides(open_app, tmp_path)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "type its microns per pixel in Microns per pixel" in errors[0]
    at.number_input(key="slides_mpp").set_value(0.972).run()
    assert not at.exception and not at.error
    assert "600 x 400 px at 0.972 um/px (typed for this slide" in page_text(at)


def test_a_typed_scale_stays_with_its_slide(open_app, with_model, page_text, tmp_path):
    image, _ = make_slide_image(600, 400, seed=1)
    tifffile.imwrite(tmp_path / "a-noscale.tif", image, tile=(256, 256), photometric="rgb")
    make_demo_slide(tmp_path / "b-demo.tif", 768, 512, seed=2)  # 0.972 um/px in its file
    at = open_slides(open_app, tmp_path)
    assert at.selectbox(key="slides_file").value.endswith("a-noscale.tif")
    at.button(key="slides_guess_0.5").click().run()  # a common scale, to check on the scale bar
    assert "600 x 400 px at 0.500 um/px (typed for this slide" in page_text(at)
    at.selectbox(key="slides_file").select(str(tmp_path / "b-demo.tif")).run()
    assert at.number_input(key="slides_mpp").value is None  # not carried to the next slide
    assert "768 x 512 px at 0.972 um/px (from the file" in page_text(at)
    at.selectbox(key="slides_file").select(str(tmp_path / "a-noscale.tif")).run()
    assert at.number_input(key="slides_mpp").value == 0.5 and not at.error  # and back with its slide
    fresh = open_slides(open_app, tmp_path)  # another session: kept beside the slide's maps
    assert "600 x 400 px at 0.500 um/px" in page_text(fresh)


def test_without_a_model_the_page_says_what_to_do(open_app, page_text, slide_folder):
    at = open_slides(open_app, slide_folder)
    assert "Choose a trained model in the sidebar" in page_text(at)
    assert np.all([b.key != "slides_score" for b in at.button])


def test_a_demo_model_on_a_real_slide_is_warned_about(open_app, with_model, page_text):
    import os

    if not os.environ.get("PCAM_SLIDES_DIR"):
        pytest.skip("PCAM_SLIDES_DIR is unset (real scanner slides not available)")
    at = open_slides(open_app, Path(os.environ["PCAM_SLIDES_DIR"]))
    assert at.selectbox(key="slides_file").value.endswith("CMU-1-Small-Region.svs")
    warnings = [w.value for w in at.warning]
    assert any("learned from the synthetic demo patches" in w and "CMU-1-Small-Region.svs is a real slide"
               in w for w in warnings), warnings


@pytest.mark.slow
def test_slide_verdicts_follow_the_reviewers_rule_in_export_and_on_the_reviewers_page(
        open_app, with_model, page_text, slide_folder, tmp_path):
    at = open_slides(open_app, slide_folder, reviewer="Dr Ann")
    if any(b.key == "slides_score" for b in at.button):
        at.button(key="slides_score").click().run()
    assert not at.exception, at.exception
    key = f"slide:{(slide_folder / 'demo.tif').resolve()}"
    grid = Grid.of(open_slide(slide_folder / "demo.tif"), 32)
    tie, agreed, later = (cell_id("demo", *grid.window_box(r, c)) for r, c in ((10, 10), (12, 20), (14, 30)))
    store = ReviewStore(tmp_path / "reviews.sqlite")
    answers = ((tie, "tumour", "normal"), (agreed, "tumour", "tumour"), (later, "tumour", "unsure"))
    for patch, ann, ben in answers:
        store.record(key, patch, ann, "Dr Ann")
        store.record(key, patch, ben, "Dr Ben")  # the latest row: "latest wins" would label tie 0
    target = tmp_path / "export-rule"
    at.text_input(key="slides_export_dir").input(str(target)).run()
    at.number_input(key="slides_export_top").set_value(0).run()
    at.button(key="slides_export").click().run()
    assert not at.exception
    labels = pd.read_csv(target / "train_labels.csv").set_index("id")["label"].to_dict()
    assert labels == {agreed: 1, later: 1}  # the tie is left out; unsure counts for nothing

    at.switch_page("views/reviewers.py").run()
    at.selectbox(key="reviewers_scope").select(key).run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Disagreements (1)" in text and "1 in conflict (left out)" in text
    pairs = next(f.value for f in at.dataframe if "kappa" in f.value.columns)
    assert len(pairs) == 1 and {"Dr Ann", "Dr Ben"} <= set(pairs.astype(str).values.ravel())  # the pair
