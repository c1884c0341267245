"""The review store on the pages: opened once per server, read with one warning when it cannot be, and the
audit trail written by whoever uses the app (pcam_core never imports Streamlit)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from app.widgets.identity import User
from pcam_core.review.store import COLUMNS, ReviewStore, default_db, shown


@st.cache_resource
def _review_store(path: str) -> ReviewStore:
    return ReviewStore(path)


def review_store() -> ReviewStore:
    """The review store: $PCAM_DB_URL, else $PCAM_REVIEW_DB, else models/reviews.sqlite.

    Raises:
        ValueError: it cannot be opened (not SQLite, a folder, a full disk); callers say so and go on.
    """
    return _review_store(default_db())


def review_db() -> str:
    """Which review store, for messages (a database URL's password hidden)."""
    return shown(default_db())


def verdict_history(dataset_key: str, patch_id: str | None = None) -> pd.DataFrame:
    """Every verdict on the dataset (or one patch), oldest first, a typed name an admin mapped to a person
    shown as that person; see `_read_verdicts`."""
    return _as_people(_read_verdicts(lambda store: store.history(dataset_key, patch_id)))


def current_verdicts(dataset_key: str) -> pd.DataFrame:
    """The latest verdict per patch of the dataset (names mapped as in `verdict_history`)."""
    return _as_people(_read_verdicts(lambda store: store.latest(dataset_key)))


def _as_people(table: pd.DataFrame) -> pd.DataFrame:
    from pcam_core.review.agreement import reviewer_key
    from pcam_core.review.users import mapped_names

    try:
        mapped = mapped_names(review_store()) if len(table) else {}
    except (ValueError, OSError):
        mapped = {}
    if mapped:
        keys = table["reviewer"].map(reviewer_key)
        table = table.assign(reviewer=keys.map(mapped).fillna(table["reviewer"]))
    return table


def patch_tags(dataset_key: str) -> pd.DataFrame:
    """The tags given on the dataset (patch_id, tag, reviewer); see `_read_verdicts`."""
    return _read_verdicts(lambda store: store.tags(dataset_key), columns=["patch_id", "tag", "reviewer"])


def _read_verdicts(read: Callable[[ReviewStore], pd.DataFrame], columns: list[str] = COLUMNS) -> pd.DataFrame:
    """A read of the verdict store. One that cannot be read (a full disk, a read-only or corrupt file)
    gets one warning and an empty table: the patches still show."""
    try:
        return read(review_store())
    except (ValueError, OSError) as e:
        st.warning(f"The verdict store {review_db()} cannot be read ({e}); verdicts are not shown and cannot "
                   f"be saved until it can (free disk space, or point PCAM_REVIEW_DB elsewhere).")
        return pd.DataFrame(columns=columns)


def blind_mode(dataset_key: str) -> dict:
    """Blind review in force on a dataset or slide: active, hide_label, hide_model (off when unreadable)."""
    try:
        return review_store().blind_mode(dataset_key)
    except (ValueError, OSError):
        return {"active": False, "hide_label": False, "hide_model": False}


def mine(history: pd.DataFrame, reviewer: str) -> pd.Series:
    """Which rows of a verdict history are `reviewer`'s (names compared as the Reviewers page does)."""
    from pcam_core.review.agreement import reviewer_key

    if not reviewer.strip():
        return pd.Series(False, index=history.index)
    return history["reviewer"].map(reviewer_key) == reviewer_key(reviewer)


def seen_history(dataset_key: str, patch_id: str, reviewer: str) -> tuple[pd.DataFrame, bool]:
    """A patch's verdicts as `reviewer` may see them, and whether blind review hides things now: in blind
    mode, until the reviewer has answered the patch, only their own rows (none)."""
    history = verdict_history(dataset_key, patch_id)
    own = mine(history, reviewer)
    hidden = blind_mode(dataset_key)["active"] and not own.any()
    return (history[own] if hidden else history), hidden


def seen_verdicts(dataset_key: str, reviewer: str) -> pd.DataFrame:
    """The current verdict per patch as `reviewer` may see them: in blind mode, their own latest only."""
    if not blind_mode(dataset_key)["active"]:
        return current_verdicts(dataset_key)
    history = verdict_history(dataset_key)
    own = history[mine(history, reviewer)]
    return own.groupby("patch_id", sort=False).tail(1).sort_values("seq").reset_index(drop=True)


def blind_verdicts(dataset_key: str) -> set[int]:
    """The sequence numbers of the verdicts given blind on a dataset or slide."""
    try:
        return review_store().blind_verdicts(dataset_key)
    except (ValueError, OSError):
        return set()


def assigned_to_me(dataset_key: str, user: User) -> set[str]:
    """The patch ids of the dataset (or slide) assigned to this user ("" among them: all of it)."""
    from pcam_core.review import assignments

    if not user.name:
        return set()
    try:
        return assignments.assigned(review_store(), dataset_key, assignments.assignee_of(user.id, user.name))
    except (ValueError, OSError):
        return set()


def assign_form(dataset_key: str, patch_ids: list[str], what: str, key: str) -> None:
    """An admin's form: `patch_ids` (or [""]: the whole slide) to a reviewer, named by sign-in or typed."""
    from app.widgets.identity import auth_configured
    from pcam_core.review import assignments, users

    with st.form(key, border=False):
        row = st.columns([3, 2], vertical_alignment="bottom")
        if auth_configured():
            people = [m for m in users.everyone(review_store()) if m.active and m.role != "viewer"]
            person = row[0].selectbox("Reviewer", people, key=f"{key}_person",
                                      format_func=lambda m: m.label)
            target = (person.id, person.name) if person else ("", "")
        else:
            typed = row[0].text_input("Reviewer's name", key=f"{key}_person", placeholder="as they type it")
            target = ("", typed)
        if row[1].form_submit_button(f"Assign {what}", icon=":material/assignment_ind:"):
            ctx = st.session_state.get("context")
            try:
                by = ctx.user.name if ctx else ""
                assignee = assignments.assignee_of(*target)
                n = assignments.assign(review_store(), dataset_key, patch_ids, assignee, target[1], by)
            except (ValueError, OSError) as e:
                st.error(str(e))
            else:
                st.success(f"Assigned {what} to {target[1]} ({n:,} rows); they find it under Assigned to me.")


def slides_reviewed() -> list[str]:
    """The keys ("slide:<path>") of the slides with verdicts, for the Reviewers page."""
    table = _read_verdicts(lambda store: store.datasets(), columns=["dataset", "verdicts", "patches"])
    return [d for d in table["dataset"] if d.startswith("slide:")]


def audit(kind: str, detail: dict) -> None:
    """An event in the review store's audit trail by whoever uses the app (`Context.user`); when the store
    cannot be written the page says so and what was done stands."""
    ctx = st.session_state.get("context")
    user = getattr(ctx, "user", None) or User("")
    try:
        review_store().log(kind, user.name or "(no name given)", detail, user.id, user.verified)
    except (ValueError, OSError) as e:
        st.warning(f"Done, but not written to the audit trail: {e}")
