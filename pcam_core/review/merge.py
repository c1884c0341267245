"""`review import`: a store written elsewhere (another machine's SQLite file, say) merged into this one.

Rows are appended, never changed, so a merge appends the other store's rows this one lacks, in their own
order, and nothing twice: a verdict is known by (dataset, patch, verdict, note, reviewer, reviewer id,
time), a tag by (dataset, patch, tag), a drawn region by (dataset, kind, corners, reviewer, time), an event
by (kind, actor, detail, time). A removal of a drawn region names the region's number in the other store;
it is renamed to the region's number here. Importing the same store twice adds nothing the second time.
"""

from __future__ import annotations

import sqlalchemy as sa

from pcam_core.review.assignments import assignments
from pcam_core.review.store import ReviewStore, blind, events, regions, tags, verdicts

KEYS = {
    "verdicts": ("dataset", "patch_id", "verdict", "note", "reviewer", "reviewer_id", "created"),
    "tags": ("dataset", "patch_id", "tag"),
    "regions": ("dataset", "kind", "points", "reviewer", "created"),
    "events": ("kind", "actor", "detail", "created"),
    "blind": ("dataset", "active", "by_name", "created"),
    "assignments": ("dataset", "patch_id", "assignee", "active", "created"),
}
TABLES = {"verdicts": verdicts, "tags": tags, "regions": regions, "events": events, "blind": blind,
          "assignments": assignments}


def _rows(store: ReviewStore, table: sa.Table) -> list[dict]:
    with store.errors(f"reading {table.name}"), store.reading() as con:
        return [dict(r._mapping) for r in con.execute(sa.select(table).order_by(table.c.seq))]


def merge(target: ReviewStore, source: ReviewStore) -> dict[str, int]:
    """Appends to `target` the rows of `source` it lacks; returns how many rows of each table were added."""
    if target.name == source.name:
        raise ValueError(f"{source.name} is the store itself: name another machine's store to import")
    added = {}
    renamed: dict[int, int] = {}  # a region's number in `source` -> in `target`
    with target.errors("importing"), target.begin() as con:
        for name, table in TABLES.items():
            key = KEYS[name]
            rows = con.execute(sa.select(table.c.seq, *(table.c[k] for k in key)))
            have = {tuple(r[1:]): r[0] for r in rows}
            taken_back = set(con.execute(sa.select(regions.c.removes).where(regions.c.kind == "removed"))
                             .scalars()) if name == "regions" else set()
            added[name] = 0
            for row in _rows(source, table):
                seq = row.pop("seq")
                removal = name == "regions" and row["kind"] == "removed"
                if removal:
                    row["removes"] = renamed.get(row["removes"], row["removes"])
                    if row["removes"] in taken_back:
                        continue  # that region's removal is here already
                    taken_back.add(row["removes"])
                elif (found := tuple(row[k] for k in key)) in have:
                    renamed[seq] = have[found]
                    continue
                made = con.execute(table.insert().values(**row).returning(table.c.seq)).scalar_one()
                renamed[seq] = made
                if not removal:
                    have[found] = made
                added[name] += 1
    return added
