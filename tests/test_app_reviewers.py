"""Issue 13 in the app: the Reviewers page (kappa, conflicts as a queue, settled labels), and the label
check from a crossval in Browse and Inspect."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from pcam_core.data.readers import open_dataset
from pcam_core.review.verdicts import ReviewStore

pytest_plugins = ["apptest"]


def test_two_reviewers_kappa_conflicts_and_settled_labels(open_app, page_text, demo_dir, tmp_path, downloads):
    store = open_dataset(demo_dir)
    key = str(store.root.resolve())
    db = ReviewStore(tmp_path / "reviews.sqlite")
    ann = ["tumour", "tumour", "normal", "normal", "tumour", "unsure"]
    ben = ["tumour", "normal", "normal", "tumour", "tumour", "normal"]
    for i, (a, b) in enumerate(zip(ann, ben, strict=True)):
        db.record(key, store.ids[i], a, "Ann")
        db.record(key, store.ids[i], b, "Ben")
    at = open_app("reviewers")
    assert not at.exception
    people, pairs, queue = (frame.value for frame in at.dataframe)  # each reviewer, each pair, conflicts
    assert people.set_index("reviewer").loc["Ann", ["tumour", "normal", "unsure"]].tolist() == [3, 2, 1]
    answered = [(a, b) for a, b in zip(ann, ben, strict=True) if "unsure" not in (a, b)]  # unsure: nothing
    assert pairs.loc[0, "kappa"] == f"{cohen_kappa_score(*zip(*answered, strict=True)):.3f}"
    assert queue["id"].tolist() == [store.ids[3], store.ids[1]]  # the ties, latest first; 5 is unsure vs no
    # the numbers on one screen agree: the queue's ties are the conflicts left out of the labels
    assert "Disagreements (2)" in page_text(at) and "2 ties" in page_text(at)
    assert "2 in conflict (left out)" in page_text(at)
    labels = pd.read_csv(pd.io.common.BytesIO(downloads(at.get("download_button")[0])), dtype={"id": str})
    assert set(labels["id"]) == {store.ids[i] for i in (0, 2, 4, 5)}  # the ties are left out
    at.button(key="reviewers_open").click().run()
    assert not at.exception and at.title[0].value == "Inspect"
    assert "Patch 1 of 2 in the current filter" in page_text(at)


def fake_crossval(runs_dir, demo_dir, flagged: list[str]) -> None:
    """A finished crossval folder as `crossval` leaves it: out-of-fold probabilities that agree with every
    label but those of `flagged`, which they confidently contradict."""
    store = open_dataset(demo_dir)
    train = store.split_indices("train")
    labels = store.labels[train]
    prob = np.where(labels == 1, 0.95, 0.05)
    wrong = np.isin(store.ids[train], flagged)
    prob[wrong] = 1 - prob[wrong]
    out = runs_dir / "crossval-base_cnn-1"
    out.mkdir(parents=True)
    (out / "crossval.json").write_text(json.dumps({"folds": 3, "config": {"data": str(demo_dir),
                                                                          "model": "base_cnn"}}))
    pd.DataFrame({"id": store.ids[train], "label": labels, "prob": prob,
                  "fold": np.arange(len(train)) % 3 + 1}).to_csv(out / "oof.csv", index=False)


def test_browse_shows_the_likely_mislabelled_and_inspect_says_why(open_app, page_text, demo_dir, tmp_path):
    store = open_dataset(demo_dir)
    flagged = list(store.ids[store.split_indices("train")[[3, 10, 20]]])
    fake_crossval(tmp_path / "runs", demo_dir, flagged)
    at = open_app("browse")
    assert not at.exception
    at.toggle(key="browse_mislabelled").set_value(True).run()
    assert not at.exception
    assert "**3** of 600 train patches match" in page_text(at)
    assert all(" · cv " in image.proto.imgs[0].caption for image in at.image)
    at.button(key=f"browse_inspect_{store.split_indices('train')[3]}").click().run()
    assert at.title[0].value == "Inspect"
    warning = at.warning[0].value
    assert "Likely mislabelled" in warning and "3-fold crossval of base_cnn" in warning
