"""`bench --only store`: what a verdict costs in the review store, beside the store before it.

A round trip is what the app does when a reviewer presses Yes: append the verdict, then read the dataset's
current verdicts back (the page shows them). Timed for 300 verdicts on a dataset already holding 5,000, p50
and p95, on: the SQLAlchemy store over SQLite (the default), over PostgreSQL when $PCAM_BENCH_PG_URL names
a server, and the sqlite3 store this replaced (the same SQL it ran: one INSERT, the latest-per-patch query).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

N, BEFORE = 300, 5000
_OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
    patch_id TEXT NOT NULL, verdict TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', reviewer TEXT NOT NULL,
    checkpoint TEXT NOT NULL DEFAULT '', prob REAL, created TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS verdicts_patch ON verdicts (dataset, patch_id, seq);
"""
_OLD_LATEST = """SELECT v.* FROM verdicts v
JOIN (SELECT patch_id, MAX(seq) AS seq FROM verdicts WHERE dataset = ? GROUP BY patch_id) last
  ON v.seq = last.seq
ORDER BY v.seq"""


class _Before:
    """The sqlite3 store as it was: a short-lived connection per call, WAL, busy timeout."""

    def __init__(self, path: Path):
        self.path = path
        with self._con() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_OLD_SCHEMA)

    def _con(self):
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 30000")
        return con

    def record(self, dataset, patch, verdict, reviewer):
        con = self._con()
        try:
            con.execute("INSERT INTO verdicts (dataset, patch_id, verdict, reviewer, created) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (dataset, patch, verdict, reviewer, datetime.now(timezone.utc).isoformat()))
        finally:
            con.close()

    def latest(self, dataset):
        con = self._con()
        try:
            return con.execute(_OLD_LATEST, (dataset,)).fetchall()
        finally:
            con.close()


def _round_trips(store) -> np.ndarray:
    for i in range(BEFORE):
        store.record("bench", f"p{i}", ("tumour", "normal", "unsure")[i % 3], "Dr Bench")
    times = []
    for i in range(N):
        start = time.perf_counter()
        store.record("bench", f"p{i * 7 % BEFORE}", "tumour", "Dr Bench")
        store.latest("bench")
        times.append(time.perf_counter() - start)
    return np.asarray(times) * 1000


def bench_store(data_dir: Path, device: str) -> list[dict]:
    from pcam_core.review.store import ReviewStore

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = [("sqlite3 store before (one file, WAL)", _Before(Path(tmp) / "before.sqlite")),
                  ("SQLAlchemy store on SQLite (WAL)", ReviewStore(Path(tmp) / "after.sqlite"))]
        if os.environ.get("PCAM_BENCH_PG_URL"):
            stores.append(("SQLAlchemy store on PostgreSQL (local server)",
                           ReviewStore(os.environ["PCAM_BENCH_PG_URL"])))
        for name, store in stores:
            ms = _round_trips(store)
            rows.append({"what": f"{name}: a verdict's round trip (append + read {BEFORE:,} current), p50 "
                                 f"(p95 {np.percentile(ms, 95):.1f} ms)", "value": float(np.median(ms)),
                         "unit": "ms"})
    return rows
