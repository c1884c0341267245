"""Issue 12 in the app: the Map page (the split as points, coloured; a selection reaches Browse), its cached
reopening, and duplicates on the Dataset, Browse, Evaluate and Train pages."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from pcam_core.data.demo import duplicated_copy
from pcam_core.data.readers import open_dataset
from pcam_core.inference import embed
from pcam_core.review.verdicts import ReviewStore

pytest_plugins = ["apptest"]


def until_mapped(at, timeout: float = 300):
    """Reruns the page until the map (or the duplicate search) is done in the background, as the page's own
    timer would."""
    deadline = time.monotonic() + timeout
    busy = ("Embedding", "Laying", "Starting", "Reading the patches")
    while any(bar.proto.text.startswith(busy) for bar in at.get("progress")):
        assert time.monotonic() < deadline, "the map is still being made"
        time.sleep(0.5)
        at.run()
    assert not at.exception, at.exception
    return at


def select_on_map(at, indices) -> None:
    """What the chart sends back when the reader boxes these points (store indices in customdata)."""
    points = [{"curve_number": 0, "point_number": i, "point_index": i, "x": 0.0, "y": 0.0,
               "customdata": int(i)} for i in indices]
    at.session_state["map_chart"] = {"selection": {"points": points, "point_indices": list(indices),
                                                   "box": [], "lasso": []}}


@pytest.mark.slow
def test_a_box_on_the_model_free_map_reaches_browse(open_app, page_text, demo_dir):
    at = until_mapped(open_app("map"))
    assert "600 train patches, mapped from colour and texture statistics" in page_text(at)
    assert at.selectbox(key="map_source").options == ["Colour and texture (no model)"]
    assert "outcome" not in at.selectbox(key="map_colour").options  # nothing to be wrong without a model
    store = open_dataset(demo_dir)
    chosen = [3, 5, 8, 13, 21]
    select_on_map(at, chosen)
    at.run()
    assert not at.exception and at.metric[0].value == "5 patches"
    at.button(key="map_browse").click().run()
    at = until_mapped(at)
    assert at.title[0].value == "Browse" and not at.exception
    assert at.toggle(key="browse_map_selection").value
    assert "**5** of 600 train patches match" in page_text(at)
    at.switch_page("views/browse.py")  # AppTest runs the page it last switched to, not the app's
    at.toggle(key="browse_map_selection").set_value(False).run()
    assert "**600** of 600 train patches match" in page_text(at)
    assert store.ids[3] in " ".join(embed.cached_map(store, "train")["id"])


@pytest.mark.slow
def test_the_model_map_colours_errors_and_shows_a_clicked_patch_with_its_neighbours(open_app, with_model,
                                                                                   page_text, demo_dir):
    at = until_mapped(open_app("map"))
    assert at.selectbox(key="map_source").value == "Model tiny"
    assert "mapped from base_cnn (run tiny, crop 96)" in page_text(at)
    at.selectbox(key="map_colour").set_value("outcome").run()
    assert not at.exception
    select_on_map(at, [7])
    at.run()
    assert not at.exception
    store = open_dataset(demo_dir)
    assert store.ids[7] in page_text(at) and "Most similar patches" in page_text(at)
    assert len(at.image) == 13  # the patch and its 12 nearest
    at.button(key="map_inspect").click().run()
    assert at.title[0].value == "Inspect" and not at.exception


def test_the_map_is_reopened_from_the_cache_without_recomputing(open_app, demo_dir, monkeypatch):
    at = until_mapped(open_app("map"))
    store = open_dataset(demo_dir)
    before = embed.cached_map(store, "train")
    assert before is not None

    def no_recompute(*args, **kwargs):
        raise AssertionError("the map was computed again")

    monkeypatch.setattr(embed, "map_2d", no_recompute)
    at = open_app("map")
    assert not at.exception and not at.get("progress")
    np.testing.assert_array_equal(embed.cached_map(store, "train")["x"], before["x"])


@pytest.fixture
def planted_app(open_app, demo_dir, tmp_path, monkeypatch):
    """The app on the demo with 8 exact copies (one per flip or turn) and 2 JPEG copies planted."""
    pairs = duplicated_copy(demo_dir, tmp_path / "planted", per_transform=1, jpeg=2, seed=1)
    monkeypatch.setenv("PCAM_DATA", str(tmp_path / "planted"))
    return open_app, tmp_path / "planted", pairs


@pytest.mark.slow
def test_duplicates_found_on_the_dataset_page_filter_browse_and_warn_evaluate(planted_app, page_text,
                                                                             trained_runs, tmp_path,
                                                                             monkeypatch):
    open_app, root, pairs = planted_app
    at = open_app()
    assert "Not looked for yet" in page_text(at)
    at = until_mapped(at.button(key="data_duplicates").click().run())
    assert "10 pairs of copies in 10 groups" in page_text(at)
    counts = next(d.value for d in at.dataframe if "splits" in d.value.columns).set_index("splits")
    assert counts.loc["test - train"].tolist() == [4, 1]  # every other copy went to test/
    assert counts.loc["train - train"].tolist() == [4, 1]

    at.switch_page("views/browse.py").run()
    at.toggle(key="browse_copies").set_value(True).run()
    assert not at.exception
    assert "**15** of 605 train patches match" in page_text(at)  # 10 sources and the 5 copies in train/

    # a run that held out the training copies while it trained on their sources
    run = tmp_path / "runs" / "leaky"
    shutil.copytree(trained_runs / "tiny", run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": str(root.resolve())}))
    held = pairs.loc[pairs["copy_split"] == "train", "copy"].tolist()
    others = [i for i in open_dataset(root).ids[:60] if i not in set(pairs["source"])][:40]
    pd.DataFrame({"id": held + others}).to_csv(run / "val_ids.csv", index=False)
    monkeypatch.setenv("PCAM_RUNS_DIR", str(tmp_path / "runs"))
    at = open_app("evaluate")
    assert not at.exception
    assert "5 held-out patch(es) have an exact or near copy among the patches this run trained on" in \
        page_text(at)
    at = open_app("train")
    assert "10 training patches have an exact or near copy" in page_text(at)


def test_a_map_selection_is_tagged_and_browse_filters_by_the_tag(open_app, page_text, demo_dir, tmp_path):
    at = until_mapped(open_app("map", reviewer="Dr Map"))
    select_on_map(at, [2, 4, 6])
    at.run()
    at.text_input(key="map_tag").input("pale stain")
    at.button(key="map_tag_save").click().run()
    assert not at.exception and "Tagged 3 patches 'pale stain'." in page_text(at)
    store = open_dataset(demo_dir)
    tags = ReviewStore(tmp_path / "reviews.sqlite").tags(str(store.root.resolve()))
    assert sorted(tags["patch_id"]) == sorted(store.ids[[2, 4, 6]]) and set(tags["reviewer"]) == {"Dr Map"}
    at.switch_page("views/browse.py").run()
    at.selectbox(key="browse_tag").set_value("pale stain").run()
    assert not at.exception and "**3** of 600 train patches match" in page_text(at)


@pytest.mark.slow
def test_a_first_look_shows_while_the_map_is_laid_out(open_app, page_text, demo_dir, tmp_path, monkeypatch):
    import threading

    fresh = tmp_path / "fresh"  # a dataset no other test has mapped (one label differs): its map is made here
    shutil.copytree(demo_dir, fresh)
    labels = pd.read_csv(fresh / "train_labels.csv")
    labels.loc[0, "label"] = 1 - labels.loc[0, "label"]
    labels.to_csv(fresh / "train_labels.csv", index=False)
    monkeypatch.setenv("PCAM_DATA", str(fresh))
    laying_out, release = threading.Event(), threading.Event()
    umap_layout = embed.map_2d

    def slow_layout(features, seed=0, *args, **kwargs):  # UMAP held back until the page has been looked at
        if kwargs.get("progress"):
            kwargs["progress"](0, len(features))
        laying_out.set()
        release.wait(120)
        return umap_layout(features, seed, *args, **kwargs)

    monkeypatch.setattr(embed, "map_2d", slow_layout)
    at = open_app("map")
    try:
        assert laying_out.wait(120), "the map was never started"
        deadline = time.monotonic() + 60
        while "A first look while the map is laid out" not in page_text(at):
            assert time.monotonic() < deadline and not at.exception, at.exception
            time.sleep(0.3)
            at.run()
        assert "600 train patches from colour and texture statistics" in page_text(at)
        figure = json.loads(at.get("plotly_chart")[0].proto.spec)
        counts = [int(trace["name"].split("(")[1].rstrip(")").replace(",", "")) for trace in figure["data"]]
        assert sum(counts) == 600  # every patch, by label, placed by PCA
        assert any(bar.proto.text.startswith("Laying out the map") for bar in at.get("progress"))
    finally:
        release.set()
    at = until_mapped(at)
    assert "600 train patches, mapped from colour and texture statistics" in page_text(at)
    assert "A first look" not in page_text(at)
