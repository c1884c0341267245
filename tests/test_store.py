"""The review store a team shares, on SQLite (always) and PostgreSQL (when PCAM_TEST_PG_URL names a server,
as `.ci/run` does with a throw-away cluster from pg_virtualenv): verdicts append-only in the database
itself, the audit trail, an old store upgraded with every row, several processes writing at once with one
killed, `review export|audit|import` on the command line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pcam_core.cli.main import main
from pcam_core.review import regions
from pcam_core.review.merge import merge
from pcam_core.review.store import HEAD, ReviewStore, StoreError

PG_URL = os.environ.get("PCAM_TEST_PG_URL")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not PG_URL, reason="PCAM_TEST_PG_URL is unset (no PostgreSQL server for this run; .ci/run starts one)"))]
REPO = Path(__file__).resolve().parents[1]


def fresh_url(backend: str, tmp_path: Path) -> str:
    """A new, empty store: an SQLite file, or a new database on the PostgreSQL server."""
    if backend == "sqlite":
        return str(tmp_path / f"reviews-{uuid.uuid4().hex[:6]}.sqlite")
    name = f"pcam_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(sa.make_url(PG_URL).set(drivername="postgresql+psycopg"),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def where(request, tmp_path) -> str:
    return fresh_url(request.param, tmp_path)


def test_verdicts_and_events_are_append_only_in_the_database_itself(where):
    store = ReviewStore(where)
    store.record("ds", "p1", "tumour", "Ann", note="clear", prob=0.9)
    store.record("ds", "p1", "normal", "Ann", reviewer_id="https://idp|ann", verified=True)
    store.log("export", "Ann", {"to": "out/"})
    for sql in ("UPDATE verdicts SET verdict = 'unsure'", "DELETE FROM verdicts",
                "UPDATE events SET actor = 'x'", "DELETE FROM events"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as con:
            con.execute(sa.text(sql))
    rows = store.every_verdict()
    assert rows["verdict"].tolist() == ["tumour", "normal"] and rows["verified"].tolist() == [False, True]
    assert rows["reviewer_id"].tolist() == ["", "https://idp|ann"]
    assert store.latest("ds")["verdict"].tolist() == ["normal"]
    trail = store.events()
    assert trail[["kind", "actor"]].values.tolist() == [["export", "Ann"]]
    assert json.loads(trail["detail"].iloc[0]) == {"to": "out/"}


def test_an_old_store_upgrades_in_place_with_every_row(tmp_path):
    # today's schema as the sqlite3 version wrote it (no regions table yet), odd characters in the rows
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE verdicts (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
            patch_id TEXT NOT NULL, verdict TEXT NOT NULL CHECK (verdict IN ('tumour', 'normal', 'unsure')),
            note TEXT NOT NULL DEFAULT '', reviewer TEXT NOT NULL, checkpoint TEXT NOT NULL DEFAULT '',
            prob REAL, created TEXT NOT NULL);
        CREATE INDEX verdicts_patch ON verdicts (dataset, patch_id, seq);
        CREATE TABLE tags (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
            patch_id TEXT NOT NULL, tag TEXT NOT NULL, reviewer TEXT NOT NULL, created TEXT NOT NULL);
    """)
    notes = ["naïve; DROP TABLE verdicts; --", "line\nbreak 'quoted' \"double\" ✓", "[x](http://a) 100%"]
    for i, note in enumerate(notes):
        con.execute("INSERT INTO verdicts (dataset, patch_id, verdict, note, reviewer, prob, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ("/data/ö", f"p{i}", "tumour", note, "Dr Ö'Neil", 0.5, f"t{i}"))
    con.execute("INSERT INTO tags (dataset, patch_id, tag, reviewer, created) VALUES ('/data/ö', 'p0', "
                "'blurry ✓', 'Ann', 't')")
    con.commit()
    con.close()
    store = ReviewStore(path)
    history = store.history("/data/ö")
    assert history["note"].tolist() == notes and history["seq"].tolist() == [1, 2, 3]
    assert (history["reviewer"] == "Dr Ö'Neil").all() and history["created"].tolist() == ["t0", "t1", "t2"]
    assert store.tags("/data/ö").values.tolist() == [["p0", "blurry ✓", "Ann"]]
    assert (store.every_verdict()["verified"] == False).all()  # noqa: E712 - typed names stay unverified
    regions.add(store, "slide:x", "tumour", [(0, 0), (9, 0), (9, 9)], "Ann")  # the newer tables are there
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == HEAD
        with pytest.raises(sqlite3.IntegrityError):  # the old CHECK is kept (no table copy)
            con.execute("INSERT INTO verdicts (dataset, patch_id, verdict, reviewer, created) "
                        "VALUES ('d', 'p', 'maybe', 'x', 't')")
    assert ReviewStore(path).history("/data/ö")["note"].tolist() == notes  # opened again: nothing changes


WRITER = """
import sys, threading
from pcam_core.review.store import ReviewStore
where, name, n, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
store = ReviewStore(where)
lock = threading.Lock()
def write(thread):
    for i in range(n):
        seq = store.record("ds", f"p{i % 50}", ("tumour", "normal", "unsure")[i % 3], f"{name}-{thread}")
        with lock, open(log, "a") as out:  # written only once the row is committed
            out.write(f"{name}-{thread},{seq}\\n")
threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


@pytest.mark.slow
def test_two_processes_of_four_writers_lose_no_committed_row_when_one_is_killed(where, tmp_path):
    ReviewStore(where)  # created (and migrated) once, before the writers race
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, where, name, "500", str(log)], env=env)
             for name, log in zip(("a", "b"), logs, strict=True)]
    deadline = time.monotonic() + 120
    while not logs[1].exists() or len(logs[1].read_text().splitlines()) < 200:
        assert time.monotonic() < deadline, "the writers did not start"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)  # mid-write
    assert procs[0].wait(timeout=300) == 0
    procs[1].wait(timeout=30)
    rows = ReviewStore(where).history("ds")
    committed = pd.concat([pd.read_csv(log, names=["reviewer", "seq"]) for log in logs])
    assert set(committed["seq"]) <= set(rows["seq"])  # every committed row is there
    assert (rows.groupby("reviewer").size()[[f"a-{t}" for t in range(4)]] == 500).all()
    assert rows["seq"].is_unique and rows["seq"].is_monotonic_increasing
    for _, mine in rows.groupby("reviewer"):  # each writer's rows in the order it wrote them
        assert mine["seq"].is_monotonic_increasing


def test_a_store_elsewhere_merges_in_once(where, tmp_path):
    here, there = ReviewStore(where), ReviewStore(tmp_path / "laptop.sqlite")
    here.record("ds", "p1", "tumour", "Ann")
    there.record("ds", "p1", "normal", "Bob", note="stroma only")
    there.record("ds", "p2", "tumour", "Bob")
    there.tag("ds", ["p1", "p2"], "pale", "Bob")
    kept = regions.add(there, "slide:s", "normal", [(0, 0), (5, 0), (5, 5)], "Bob")
    gone = regions.add(there, "slide:s", "tumour", [(0, 0), (7, 0), (7, 7)], "Bob")
    regions.remove(there, "slide:s", gone, "Bob")
    there.log("export", "Bob", {"to": "x"})
    assert merge(here, there) == {"verdicts": 2, "tags": 2, "regions": 3, "events": 1, "blind": 0,
                                  "assignments": 0}
    assert set(merge(here, there).values()) == {0}  # nothing twice
    assert here.history("ds")[["patch_id", "verdict", "reviewer"]].values.tolist() == [
        ["p1", "tumour", "Ann"], ["p1", "normal", "Bob"], ["p2", "tumour", "Bob"]]
    now = regions.current(here, "slide:s")
    assert [(r.kind, r.reviewer) for r in now] == [("normal", "Bob")] and kept  # the removal came along
    with pytest.raises(ValueError, match="the store itself"):
        merge(here, ReviewStore(where))


def test_review_export_audit_and_import_on_the_command_line(tmp_path, capsys):
    db, other = tmp_path / "team.sqlite", tmp_path / "laptop.sqlite"
    ReviewStore(db).record("ds", "p1", "tumour", "Ann", note="a, comma")
    ReviewStore(other).record("ds", "p2", "normal", "Bob")
    assert main(["review", "import", "--db", str(db), "--from", str(other), "--actor", "Dr Admin"]) == 0
    assert "1 verdicts" in capsys.readouterr().out
    assert main(["review", "export", "--db", str(db), "--out", str(tmp_path / "v.csv")]) == 0
    rows = pd.read_csv(tmp_path / "v.csv", keep_default_na=False)
    assert rows[["patch_id", "verdict", "note", "reviewer", "verified"]].values.tolist() == [
        ["p1", "tumour", "a, comma", "Ann", False], ["p2", "normal", "", "Bob", False]]
    assert list(rows.columns) == ["seq", "dataset", "patch_id", "verdict", "note", "reviewer", "reviewer_id",
                                  "verified", "blind", "checkpoint", "prob", "created"]
    assert main(["review", "audit", "--db", str(db), "--out", str(tmp_path / "e.csv")]) == 0
    events = pd.read_csv(tmp_path / "e.csv")
    assert events[["kind", "actor"]].values.tolist() == [["import", "Dr Admin"]]
    assert json.loads(events["detail"].iloc[0])["verdicts"] == 1
    (tmp_path / "junk.sqlite").write_text("not a database")
    for argv, message in [(["review", "import", "--db", str(db), "--from", str(tmp_path / "none.sqlite")],
                           "does not exist"),
                          (["review", "import", "--db", str(db), "--from", str(tmp_path / "junk.sqlite")],
                           "not an SQLite review store"),
                          (["review", "export", "--db", "mysql://h/db", "--out", str(tmp_path / "x.csv")],
                           "SQLite (a file) or PostgreSQL")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert len(ReviewStore(db).every_verdict()) == 2  # nothing lost


def test_a_store_that_cannot_be_reached_is_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match="cannot be opened as a verdict store"):
        ReviewStore("postgresql://nobody@127.0.0.1:9/none")


def test_blind_mode_is_kept_per_dataset_with_who_set_it(where):
    store = ReviewStore(where)
    assert store.blind_mode("ds") == {"active": False, "hide_label": False, "hide_model": False}
    store.set_blind("ds", True, hide_label=True, hide_model=False, by="Dr Admin", by_id="idp|admin")
    store.set_blind("slide:s", True, hide_label=False, hide_model=True, by="Dr Admin")
    assert store.blind_mode("ds") == {"active": True, "hide_label": True, "hide_model": False}
    blind = store.record("ds", "p1", "tumour", "Ann", blind=True)
    store.record("ds", "p1", "normal", "Bob")
    assert store.blind_verdicts("ds") == {blind}
    store.set_blind("ds", False, hide_label=True, hide_model=True, by="Dr Admin")
    assert store.blind_mode("ds") == {"active": False, "hide_label": False, "hide_model": False}  # all off
    assert store.blind_mode("slide:s")["hide_model"]
    trail = store.events("blind mode")
    assert len(trail) == 3 and json.loads(trail["detail"].iloc[0])["hide label"] is True
