"""Regions a reviewer drew on a slide: "tumour the model missed" or "not tumour", kept in the review store.

A region is a polygon in level-0 pixels of the slide, drawn by one reviewer. Like verdicts, rows are only
ever appended: taking a region back appends a row of kind "removed" that names it, so who drew what and
who removed it stays in the store. `current` is what is on the slide now.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import sqlalchemy as sa

from pcam_core.review.store import ReviewStore, now, regions

KINDS = ("tumour", "normal")  # "tumour the model missed" / "not tumour"
MAX_CORNERS = 10_000


@dataclass(frozen=True)
class Region:
    seq: int
    kind: str
    points: list[tuple[float, float]]
    reviewer: str
    created: str


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
    row = dict(dataset=dataset, kind=kind, points=json.dumps(corners), reviewer=reviewer.strip(),
               created=now())
    with store.errors("saving the region"), store.begin() as con:
        return int(con.execute(regions.insert().values(**row).returning(regions.c.seq)).scalar_one())


def remove(store: ReviewStore, dataset: str, seq: int, reviewer: str) -> None:
    """Takes region `seq` off the slide (a row of kind "removed": the region itself stays in the store)."""
    if not reviewer or not reviewer.strip():
        raise ValueError("removing a region needs a reviewer name: enter yours in the sidebar")
    if seq not in {r.seq for r in current(store, dataset)}:
        raise ValueError(f"region {seq} is not on this slide (already removed, or drawn on another)")
    row = dict(dataset=dataset, kind="removed", removes=int(seq), reviewer=reviewer.strip(), created=now())
    with store.errors("removing the region"), store.begin() as con:
        con.execute(regions.insert().values(**row))


def current(store: ReviewStore, dataset: str) -> list[Region]:
    """The regions on `dataset` now, oldest first."""
    query = sa.select(regions.c.seq, regions.c.kind, regions.c.points, regions.c.removes, regions.c.reviewer,
                      regions.c.created).where(regions.c.dataset == dataset).order_by(regions.c.seq)
    with store.errors("reading the regions"), store.reading() as con:
        rows = con.execute(query).all()
    removed = {r[3] for r in rows if r[1] == "removed"}
    return [Region(seq, kind, [tuple(p) for p in json.loads(points)], reviewer, created)
            for seq, kind, points, _, reviewer, created in rows if kind != "removed" and seq not in removed]
