"""Assignments: an admin gives patches (a Browse filter's, say) or a whole slide to a reviewer, who finds
them under "Assigned to me". Rows are appended: taking an assignment back is a row with active False, and
the latest row for a patch and a reviewer is in force. A reviewer is named by their sign-in identity, or in
local mode by their typed name ("name:" and the name as the Reviewers page compares names).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from pcam_core.review.agreement import reviewer_key
from pcam_core.review.store import ReviewStore, meta, now

WHOLE = ""  # the patch id of an assignment of the whole dataset or slide

assignments = sa.Table("assignments", meta, sa.Column("seq", sa.Integer, primary_key=True),
                       *(sa.Column(c, sa.Boolean if c == "active" else sa.Text)
                         for c in ("dataset", "patch_id", "assignee", "assignee_name", "active", "by_name",
                                   "created")))


def assignee_of(user_id: str, name: str) -> str:
    """How the store names a reviewer: their sign-in identity, else their typed name."""
    return user_id or f"name:{reviewer_key(name)}"


def assign(store: ReviewStore, dataset: str, patch_ids: Iterable[str], assignee: str, assignee_name: str,
           by: str, active: bool = True) -> int:
    """Gives `patch_ids` (or [WHOLE]) of `dataset` to a reviewer (or takes them back); returns how many rows
    were written. An event in the audit trail too."""
    ids = list(dict.fromkeys(str(p) for p in patch_ids))
    if not assignee_name.strip() or assignee in ("", "name:"):
        raise ValueError("name the reviewer to assign to")
    rows = [dict(dataset=dataset, patch_id=p, assignee=assignee, assignee_name=assignee_name.strip(),
                 active=bool(active), by_name=by, created=now()) for p in ids]
    if rows:
        with store.errors("assigning"), store.begin() as con:
            con.execute(assignments.insert(), rows)
        store.log("assignment", by, {"dataset": dataset, "to": assignee_name, "patches": len(ids),
                                     "whole": WHOLE in ids, "active": bool(active)})
    return len(rows)


def assigned(store: ReviewStore, dataset: str, assignee: str) -> set[str]:
    """The patch ids of `dataset` assigned to `assignee` now (WHOLE among them: all of it)."""
    query = sa.select(assignments.c.patch_id, assignments.c.active).where(
        assignments.c.dataset == dataset, assignments.c.assignee == assignee).order_by(assignments.c.seq)
    with store.errors("reading assignments"), store.reading() as con:
        latest = {patch: active for patch, active in con.execute(query)}
    return {patch for patch, active in latest.items() if active}
