"""Issue 12 in the app: the Map page (the split as points, coloured; a selection reaches Browse) and its
cached reopening."""

from __future__ import annotations

import time

import numpy as np

from pcam_core import embed
from pcam_core.data import open_dataset

pytest_plugins = ["apptest"]


def until_mapped(at, timeout: float = 300):
    """Reruns the page until the map is made in the background, as the page's own timer would."""
    deadline = time.monotonic() + timeout
    while any(bar.proto.text.startswith(("Embedding", "Laying", "Starting")) for bar in at.get("progress")):
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
