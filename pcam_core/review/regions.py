"""Regions a reviewer drew on a slide: "tumour the model missed" or "not tumour", kept in the review store.

A region is a polygon in level-0 pixels of the slide, drawn by one reviewer. Like verdicts, rows are only
ever appended: taking a region back appends a row of kind "removed" that names it, so who drew what and
who removed it stays in the store. `current` is what is on the slide now.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone

from pcam_core.review.verdicts import ReviewStore

KINDS = ("tumour", "normal")  # "tumour the model missed" / "not tumour"
MAX_CORNERS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS regions (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset  TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('tumour', 'normal', 'removed')),
    points   TEXT NOT NULL DEFAULT '[]',
    removes  INTEGER,
    reviewer TEXT NOT NULL,
    created  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS regions_dataset ON regions (dataset, seq);
"""


@dataclass(frozen=True)
class Region:
    seq: int
    kind: str
    points: list[tuple[float, float]]
    reviewer: str
    created: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _checked(points) -> list[tuple[float, float]]:
    try:
        corners = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError) as e:
        raise ValueError(f"a region's corners are (x, y) pairs of numbers ({e})") from e
    if not 3 <= len(corners) <= MAX_CORNERS:
        raise ValueError(f"a region has 3 to {MAX_CORNERS:,} corners, got {len(corners):,}")
    if not all(math.isfinite(v) for xy in corners for v in xy):
        raise ValueError("a region's corners must be finite numbers")
    return corners


def add(store: ReviewStore, dataset: str, kind: str, points, reviewer: str) -> int:
    """Stores a region `reviewer` drew on `dataset` (the slide's key) and returns its number."""
    if kind not in KINDS:
        raise ValueError(f"a region is one of {list(KINDS)}, got {kind!r}")
    if not reviewer or not reviewer.strip():
        raise ValueError("a region needs a reviewer name: enter yours in the sidebar")
    corners = _checked(points)
    with store.connect() as con:
        con.executescript(_SCHEMA)
        cur = con.execute("INSERT INTO regions (dataset, kind, points, reviewer, created) "
                          "VALUES (?, ?, ?, ?, ?)",
                          (dataset, kind, json.dumps(corners), reviewer.strip(), _now()))
        return int(cur.lastrowid)


def remove(store: ReviewStore, dataset: str, seq: int, reviewer: str) -> None:
    """Takes region `seq` off the slide (a row of kind "removed": the region itself stays in the store)."""
    if not reviewer or not reviewer.strip():
        raise ValueError("removing a region needs a reviewer name: enter yours in the sidebar")
    if seq not in {r.seq for r in current(store, dataset)}:
        raise ValueError(f"region {seq} is not on this slide (already removed, or drawn on another)")
    with store.connect() as con:
        con.execute("INSERT INTO regions (dataset, kind, removes, reviewer, created) "
                    "VALUES (?, 'removed', ?, ?, ?)",
                    (dataset, int(seq), reviewer.strip(), _now()))


def current(store: ReviewStore, dataset: str) -> list[Region]:
    """The regions on `dataset` now, oldest first."""
    with store.connect() as con:
        con.executescript(_SCHEMA)
        rows = con.execute("SELECT seq, kind, points, removes, reviewer, created FROM regions "
                           "WHERE dataset = ? ORDER BY seq", (dataset,)).fetchall()
    removed = {r[3] for r in rows if r[1] == "removed"}
    return [Region(seq, kind, [tuple(p) for p in json.loads(points)], reviewer, created)
            for seq, kind, points, _, reviewer, created in rows if kind != "removed" and seq not in removed]
