"""The verdict store: validation, audit trail, latest view, CSV export, concurrent writers."""

from __future__ import annotations

import io
import sqlite3
import threading

import pandas as pd
import pytest

from pcam_core.review import VERDICTS, ReviewStore


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
    assert store.counts("ds") == {"agree": 0, "disagree": 1, "unsure": 1}
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
    current = pd.read_csv(io.StringIO(store.export_csv("ds")))
    assert list(current["verdict"]) == ["unsure"]
    trail = pd.read_csv(io.StringIO(store.export_csv("ds", full_history=True)))
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
