"""The verdict store: validation, audit trail, latest view, CSV export, concurrent writers."""

from __future__ import annotations

import io
import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest

from pcam_core.review import VERDICTS, ReviewStore, review_table, select


@pytest.fixture
def store(tmp_path) -> ReviewStore:
    return ReviewStore(tmp_path / "reviews" / "verdicts.sqlite")


def test_database_is_in_wal_mode(store):
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_every_change_is_kept_and_latest_wins(store):
    store.record("ds", "p1", "agree", "Ann", note="clear tumour", checkpoint="run1/best.pt", prob=0.91)
    store.record("ds", "p1", "disagree", "Bob", note="  only stroma  ")
    store.record("ds", "p2", "unsure", "Ann")
    store.record("other", "p1", "agree", "Ann")

    history = store.history("ds", "p1")
    assert list(history["verdict"]) == ["agree", "disagree"]
    assert list(history["reviewer"]) == ["Ann", "Bob"]
    assert history["prob"].iloc[0] == pytest.approx(0.91)
    assert history["note"].iloc[1] == "only stroma"

    latest = store.latest("ds").set_index("patch_id")
    assert latest.loc["p1", "verdict"] == "disagree"
    assert latest.loc["p2", "verdict"] == "unsure"
    assert len(latest) == 2
    assert store.latest("ds")["verdict"].value_counts().to_dict() == {"disagree": 1, "unsure": 1}
    assert len(store.history("ds")) == 3


@pytest.mark.parametrize("verdict, reviewer, message", [
    ("maybe", "Ann", "not one of"),
    ("agree", "  ", "reviewer name"),
])
def test_bad_input_is_refused(store, verdict, reviewer, message):
    with pytest.raises(ValueError, match=message):
        store.record("ds", "p1", verdict, reviewer)
    assert store.history("ds").empty


def test_csv_export_round_trips(store):
    store.record("ds", "p1", "agree", "Ann", note="a, with comma")
    store.record("ds", "p1", "unsure", "Ann")
    current = pd.read_csv(io.StringIO(store.latest("ds").to_csv(index=False)))
    assert list(current["verdict"]) == ["unsure"]
    trail = pd.read_csv(io.StringIO(store.history("ds").to_csv(index=False)))
    assert list(trail["verdict"]) == ["agree", "unsure"]
    assert trail["note"].iloc[0] == "a, with comma"


def test_two_threads_writing_at_once_lose_nothing(store):
    n = 150
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(reviewer: str) -> None:
        start.wait()
        try:
            for i in range(n):
                store.record("ds", f"p{i % 20}", VERDICTS[i % 3], reviewer, note=str(i))
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("tab-a", "tab-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    trail = store.history("ds")
    assert len(trail) == 2 * n
    assert trail.groupby("reviewer").size().to_dict() == {"tab-a": n, "tab-b": n}
    assert trail["seq"].is_unique and trail["seq"].is_monotonic_increasing
    assert len(store.latest("ds")) == 20


# ---- the review table and what the Browse filters mean ----------------------------------------------

def patches(labels, splits=None):
    from test_splits import store_of

    return store_of(labels, splits)


def preds_for(store, probs, spreads=None):
    idx = np.arange(len(probs))
    return pd.DataFrame({"id": store.ids[idx], "index": idx, "prob": probs,
                         "spread": spreads if spreads is not None else np.zeros(len(probs)),
                         "label": store.labels[idx]})


def test_review_table_joins_labels_verdicts_and_predictions(store):
    data = patches([1, 0, 1, 0])
    store.record("ds", "p001", "agree", "Ann")
    store.record("ds", "p001", "unsure", "Bob")  # the latest counts
    table = review_table(data, "train", store.latest("ds"), preds_for(data, [0.9, 0.2, 0.4, 0.5]))
    assert table["verdict"].tolist() == [None, "unsure", None, None]
    assert table["prob"].tolist() == pytest.approx([0.9, 0.2, 0.4, 0.5])
    assert table["priority"].tolist() == pytest.approx([0.2, 0.4, 0.8, 1.0])
    assert table["loss"].tolist() == pytest.approx([-np.log(0.9), -np.log(0.8), -np.log(0.4), -np.log(0.5)])
    bare = review_table(data, "train", store.latest("ds"), None)
    assert "prob" not in bare and len(bare) == 4


def test_outcomes_mean_what_a_pathologist_means(store):
    data = patches([1, 1, 0, 0, -1, -1], ["test"] * 6)
    table = review_table(data, "test", store.latest("ds"), preds_for(data, [0.7, 0.3, 0.6, 0.1, 0.9, 0.1]))
    ids = lambda **kw: select(table, **kw)["id"].tolist()  # noqa: E731
    assert ids(outcome="false negative") == ["p001"]  # tumour called normal
    assert ids(outcome="false positive") == ["p002"]  # normal called tumour
    assert ids(outcome="correct") == ["p000", "p003"]  # unlabelled patches are neither right nor wrong
    assert ids(predicted="tumour") == ["p000", "p002", "p004"]
    assert ids(label="normal", prob=(0.05, 0.5)) == ["p003"]
    assert ids(sort=("prob", False))[:2] == ["p004", "p000"]
    with pytest.raises(ValueError, match="outcome 'wrong'"):
        select(table, outcome="wrong")
    with pytest.raises(ValueError, match="need a model"):
        select(review_table(data, "test", store.latest("ds"), None), outcome="correct")


def test_review_queue_puts_unreviewed_first_then_the_least_sure(store):
    data = patches([1, 0, 1, 0, 1])
    store.record("ds", "p004", "agree", "Ann")  # the least sure, but already reviewed
    store.record("ds", "p001", "disagree", "Ann")
    table = review_table(data, "train", store.latest("ds"),
                         preds_for(data, [0.95, 0.6, 0.3, 0.45, 0.5], [0.0, 0.0, 0.0, 0.1, 0.0]))
    queue = select(table, queue=True)
    # unreviewed by priority: p003 (0.9 + 0.2), p002 (0.6), p000 (0.1); then reviewed: p004 (1.0), p001 (0.8)
    assert queue["id"].tolist() == ["p003", "p002", "p000", "p004", "p001"]
    assert select(table, verdict="not reviewed", queue=True)["id"].tolist() == ["p003", "p002", "p000"]
    assert select(table, verdict="disagree")["id"].tolist() == ["p001"]
    assert select(table, min_priority=0.7, queue=True)["id"].tolist() == ["p003", "p004", "p001"]
