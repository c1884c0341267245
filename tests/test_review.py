"""The verdict store: validation, audit trail, latest view, CSV export, concurrent writers."""

from __future__ import annotations

import io
import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest

from pcam_core.review.verdicts import VERDICTS, ReviewStore, review_table, select


@pytest.fixture
def store(tmp_path) -> ReviewStore:
    return ReviewStore(tmp_path / "reviews" / "verdicts.sqlite")


def test_database_is_in_wal_mode(store):
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_every_change_is_kept_and_latest_wins(store):
    store.record("ds", "p1", "tumour", "Ann", note="clear tumour", checkpoint="run1/best.pt", prob=0.91)
    store.record("ds", "p1", "normal", "Bob", note="  only stroma  ")
    store.record("ds", "p2", "unsure", "Ann")
    store.record("other", "p1", "tumour", "Ann")

    history = store.history("ds", "p1")
    assert list(history["verdict"]) == ["tumour", "normal"]
    assert list(history["reviewer"]) == ["Ann", "Bob"]
    assert history["prob"].iloc[0] == pytest.approx(0.91)
    assert history["note"].iloc[1] == "only stroma"

    latest = store.latest("ds").set_index("patch_id")
    assert latest.loc["p1", "verdict"] == "normal"
    assert latest.loc["p2", "verdict"] == "unsure"
    assert len(latest) == 2
    assert store.latest("ds")["verdict"].value_counts().to_dict() == {"normal": 1, "unsure": 1}
    assert len(store.history("ds")) == 3


@pytest.mark.parametrize("verdict, reviewer, message", [
    ("maybe", "Ann", "not one of"),
    ("tumour", "  ", "reviewer name"),
])
def test_bad_input_is_refused(store, verdict, reviewer, message):
    with pytest.raises(ValueError, match=message):
        store.record("ds", "p1", verdict, reviewer)
    assert store.history("ds").empty


def test_csv_export_round_trips(store):
    store.record("ds", "p1", "tumour", "Ann", note="a, with comma")
    store.record("ds", "p1", "unsure", "Ann")
    current = pd.read_csv(io.StringIO(store.latest("ds").to_csv(index=False)))
    assert list(current["verdict"]) == ["unsure"]
    trail = pd.read_csv(io.StringIO(store.history("ds").to_csv(index=False)))
    assert list(trail["verdict"]) == ["tumour", "unsure"]
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
    store.record("ds", "p001", "tumour", "Ann")
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
    store.record("ds", "p004", "tumour", "Ann")  # the least sure, but already reviewed
    store.record("ds", "p001", "normal", "Ann")
    table = review_table(data, "train", store.latest("ds"),
                         preds_for(data, [0.95, 0.6, 0.3, 0.45, 0.5], [0.0, 0.0, 0.0, 0.1, 0.0]))
    queue = select(table, queue=True)
    # unreviewed by priority: p003 (0.9 + 0.2), p002 (0.6), p000 (0.1); then reviewed: p004 (1.0), p001 (0.8)
    assert queue["id"].tolist() == ["p003", "p002", "p000", "p004", "p001"]
    assert select(table, verdict="not reviewed", queue=True)["id"].tolist() == ["p003", "p002", "p000"]
    assert select(table, verdict="normal")["id"].tolist() == ["p001"]
    assert select(table, verdict="differs from the label")["id"].tolist() == []  # p001 is normal, p004 tumour
    assert select(table, verdict="differs from the model")["id"].tolist() == ["p001"]  # called tumour at 0.6
    assert select(table, min_priority=0.7, queue=True)["id"].tolist() == ["p003", "p004", "p001"]


def test_an_old_store_of_agree_and_disagree_is_migrated_once_by_the_written_rule(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE verdicts (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
            patch_id TEXT NOT NULL,
            verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'unsure')),
            note TEXT NOT NULL DEFAULT '', reviewer TEXT NOT NULL, checkpoint TEXT NOT NULL DEFAULT '',
            prob REAL, created TEXT NOT NULL);
        CREATE INDEX verdicts_patch ON verdicts (dataset, patch_id, seq);
        INSERT INTO verdicts (dataset, patch_id, verdict, note, reviewer, prob, created) VALUES
            ('ds', 'a', 'agree', 'clear', 'Ann', 0.912, '2026-11-01T10:00'),
            ('ds', 'b', 'agree', '', 'Ann', 0.2, '2026-11-01T10:01'),
            ('ds', 'c', 'disagree', '', 'Bob', 0.8, '2026-11-01T10:02'),
            ('ds', 'd', 'disagree', '', 'Bob', NULL, '2026-11-01T10:03'),
            ('ds', 'e', 'unsure', '', 'Bob', 0.5, '2026-11-01T10:04');
    """)
    con.close()
    store = ReviewStore(path)
    trail = store.history("ds")
    # agree -> the model's call at P 0.5; disagree -> the other; no P -> unsure; seq and dates kept
    assert trail["verdict"].tolist() == ["tumour", "normal", "normal", "unsure", "unsure"]
    assert trail["seq"].tolist() == [1, 2, 3, 4, 5] and trail["created"].iloc[0] == "2026-11-01T10:00"
    assert trail["note"].tolist()[:2] == ["clear [was agree at P 0.912]", "[was agree at P 0.200]"]
    assert trail["note"].iloc[3] == "[was disagree]"
    store.record("ds", "a", "normal", "Cy")  # the new schema takes new verdicts, refuses old ones
    with pytest.raises(ValueError):
        store.record("ds", "a", "agree", "Cy")
    again = ReviewStore(path).history("ds")  # a second open changes nothing
    assert again["note"].tolist()[:5] == trail["note"].tolist() and len(again) == 6


def test_tags_are_kept_once_per_patch_with_who_gave_them_first(store):
    assert store.tag("d", ["a", "b"], " pale stain ", "Ann") == 2
    store.tag("d", ["b", "c"], "pale stain", "Ben")
    store.tag("d", ["a"], "blurred", "Ben")
    store.tag("other", ["a"], "pale stain", "Ann")
    tags = store.tags("d")
    assert tags.values.tolist() == [["a", "blurred", "Ben"], ["a", "pale stain", "Ann"],
                                    ["b", "pale stain", "Ann"], ["c", "pale stain", "Ben"]]
    with pytest.raises(ValueError, match="1 to 64 characters"):
        store.tag("d", ["a"], "  ", "Ann")
    with pytest.raises(ValueError, match="reviewer name"):
        store.tag("d", ["a"], "x", "")
    assert len(store.tags("d")) == 4  # nothing half-written by the refused calls


def test_a_tag_sent_twice_writes_each_patch_once(store):
    # the Map page's form sent by Enter and then by its button: the second adds nothing
    assert store.tag("d", ["a", "b", "b"], "pale stain", "Ann") == 2
    assert store.tag("d", ["a", "b", "c"], "pale stain", "Ann") == 1
    with sqlite3.connect(store.path) as con:
        rows = con.execute("SELECT patch_id FROM tags WHERE dataset = 'd' ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == ["a", "b", "c"]
