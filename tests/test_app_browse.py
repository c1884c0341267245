"""The Browse page: the grid, its filters and sorts, the review queue, and opening a patch in Inspect."""

import threading
import time

import numpy as np
import pandas as pd
import pytest

from pcam_core import review
from pcam_core.data.readers import open_dataset
from pcam_core.inference import infer
from pcam_core.inference.infer import predictions_table
from pcam_core.review.verdicts import ReviewStore

pytest_plugins = ["apptest"]


def tiles(at) -> list[tuple[str, float]]:
    """(true-label letter, probability) of each grid tile, read from its caption ("T · p 0.93 · ...")."""
    captions = [image.proto.imgs[0].caption.split(" · ") for image in at.image]
    return [(c[0], float(c[1][2:])) for c in captions]


def test_browse_without_a_model_pages_through_the_split(open_app, page_text):
    at = open_app("browse")
    assert not at.exception
    assert "**600** of 600 train patches match; page 1 of 13." in page_text(at)
    assert len(at.image) == 48
    at.segmented_control(key="browse_size").set_value(24).run()
    assert len(at.image) == 24
    at.number_input(key="browse_page").set_value(25).run()
    assert "page 25 of 25" in page_text(at)
    at.selectbox(key="browse_label").set_value("tumour").run()
    assert not at.exception
    text = page_text(at)
    assert "page 1 of" in text  # a new filter starts again from the first page
    tumour = int(text.split("**")[1])
    assert 0 < tumour < 600
    at.selectbox(key="browse_split").set_value("test").run()
    assert "of 60 test patches" in page_text(at)


@pytest.mark.slow
def test_browse_with_a_model_filters_sorts_and_queues(open_app, with_model, page_text, demo_dir, tmp_path,
                                                      scored):
    at = scored(open_app("browse"))
    at.selectbox(key="browse_sort").set_value("probability, high first").run()
    assert not at.exception
    probs = [p for _, p in tiles(at)]
    assert probs == sorted(probs, reverse=True)

    at.selectbox(key="browse_outcome").set_value("false negative").run()
    assert not at.exception
    assert tiles(at) and all(label == "T" and p <= 0.5 for label, p in tiles(at))

    at.selectbox(key="browse_outcome").set_value("any").run()
    at.toggle(key="browse_queue").set_value(True).run()
    assert not at.exception
    # the page shows the library's review queue, in its order: nothing reviewed yet, so least sure first
    store = open_dataset(demo_dir)
    preds = predictions_table([with_model], store, "train")
    queue = review.select(review.review_table(store, "train", ReviewStore(tmp_path / "reviews.sqlite")
                                              .latest(str(demo_dir.resolve())), preds), queue=True)
    assert [p for _, p in tiles(at)] == [round(p, 3) for p in queue["prob"].head(48)]
    assert queue["priority"].is_monotonic_decreasing


def test_inspect_button_opens_the_patch_in_inspect(open_app, page_text):
    at = open_app("browse")
    target = [b for b in at.button if b.key.startswith("browse_inspect_")][2]  # the third tile's Inspect
    index = int(target.key.rsplit("_", 1)[1])
    target.click().run()
    assert not at.exception
    assert at.title[0].value == "Inspect"
    assert at.session_state["inspect_index"] == index
    assert "Patch 3 of 600 in the current filter" in page_text(at)


@pytest.mark.slow
def test_browse_shows_its_first_page_while_the_split_is_scored(open_app, with_model, page_text, demo_dir,
                                                                monkeypatch, scored, scoring_of):
    release, real = threading.Event(), infer.predictions_table
    store = open_dataset(demo_dir)
    first_100 = store.split_indices("train")[:100]

    def held(*args, partial=None, **kwargs):  # 100 patches scored at once, the rest when the test says
        if partial is not None:
            partial(pd.DataFrame({"id": store.ids[first_100], "index": first_100, "spread": 0.0,
                                  "prob": np.linspace(0, 1, 100), "label": store.labels[first_100]}))
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "predictions_table", held)
    at = open_app()
    at.selectbox(key="tta").set_value(2).run()  # views no other test scores: nothing is on disk yet
    at.switch_page("views/browse.py").run()
    assert not at.exception
    assert "Scoring all 600 train patches" in scoring_of(at)
    first = tiles(at)  # the first page is there, each tile with its probability
    assert len(first) == 48
    deadline = time.monotonic() + 30
    while "browse_sort" not in [box.key for box in at.selectbox]:  # offered once the first rows are scored
        assert time.monotonic() < deadline
        time.sleep(0.2)
        at.run()
    at.toggle(key="browse_queue").set_value(True).run()  # the queue starts with the patches scored so far
    assert not at.exception
    assert "cover the 100 of 600 patches scored so far" in page_text(at) and len(tiles(at)) == 48
    at.toggle(key="browse_queue").set_value(False).run()
    at.selectbox(key="browse_sort").set_value("probability, high first").run()
    assert [p for _, p in tiles(at)][:3] == [1.0, round(98 / 99, 3), round(97 / 99, 3)]  # among those 100
    at.selectbox(key="browse_sort").set_value("dataset order").run()

    release.set()
    at = scored(at)
    table = real([with_model], open_dataset(demo_dir), "train", tta=2)
    assert first == [("T" if label == 1 else "N", round(p, 3))
                     for label, p in zip(table["label"].head(48), table["prob"].head(48), strict=True)]
    at.selectbox(key="browse_sort").set_value("probability, high first").run()
    assert not at.exception and len(tiles(at)) == 48
