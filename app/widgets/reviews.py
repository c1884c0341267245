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
    """Every verdict on the dataset (or one patch), oldest first; see `_read_verdicts`."""
    return _read_verdicts(lambda store: store.history(dataset_key, patch_id))


def current_verdicts(dataset_key: str) -> pd.DataFrame:
    """The latest verdict per patch of the dataset; see `_read_verdicts`."""
    return _read_verdicts(lambda store: store.latest(dataset_key))


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
