"""Review: verdicts in SQLite, and the table a reviewer filters (outcomes, doubt, the review queue).

A verdict answers one question about the tissue: is there tumour in the centre 32 x 32? "tumour",
"normal" or "unsure". Whether it agrees with the given label or with the model is derived, never asked.
Every verdict a reviewer gives is a new row; nothing is updated or deleted, so the history of a
patch is its rows in order and its current verdict is the latest one. The database runs in WAL
mode and each call opens its own short-lived connection, so several Streamlit sessions (threads
of one server) or processes can write at once: writers queue on SQLite's lock, none is lost.

`review_table` joins a split's patches with their current verdicts and a model's predictions;
`select` is what the Browse filters mean ("false negative", "not reviewed", the review queue), so the
app, the command line and the tests share one definition.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

VERDICTS = ("tumour", "normal", "unsure")  # the answer to "tumour in the centre 32 x 32?"
ANSWERS = {"tumour": "Yes", "normal": "No", "unsure": "Unsure"}  # how the pages ask it
COLUMNS = ["seq", "dataset", "patch_id", "verdict", "note", "reviewer", "checkpoint", "prob", "created"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset    TEXT NOT NULL,
    patch_id   TEXT NOT NULL,
    verdict    TEXT NOT NULL CHECK (verdict IN ('tumour', 'normal', 'unsure')),
    note       TEXT NOT NULL DEFAULT '',
    reviewer   TEXT NOT NULL,
    checkpoint TEXT NOT NULL DEFAULT '',
    prob       REAL,
    created    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_patch ON verdicts (dataset, patch_id, seq);
CREATE TABLE IF NOT EXISTS tags (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset    TEXT NOT NULL,
    patch_id   TEXT NOT NULL,
    tag        TEXT NOT NULL,
    reviewer   TEXT NOT NULL,
    created    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tags_dataset ON tags (dataset, tag);
"""

# Stores written before verdicts meant one thing held "agree" / "disagree" with "the label and the model
# that the centre holds tumour". The model's P at that moment is kept with each row, and the model's call
# was what the reviewer weighed, so the rule is: agree -> the model's call at P 0.5 (tumour when P >= 0.5),
# disagree -> the other one; without a P the answer cannot be known -> unsure. The note keeps the old
# verdict and P ("[was agree at P 0.912]"), and seq and created are unchanged.
_MIGRATE = """
ALTER TABLE verdicts RENAME TO verdicts_v1;
DROP INDEX IF EXISTS verdicts_patch;
""" + _SCHEMA + """
INSERT INTO verdicts (seq, dataset, patch_id, verdict, note, reviewer, checkpoint, prob, created)
SELECT seq, dataset, patch_id,
       CASE WHEN verdict = 'unsure' OR prob IS NULL THEN 'unsure'
            WHEN (verdict = 'agree') = (prob >= 0.5) THEN 'tumour' ELSE 'normal' END,
       TRIM(note || ' [was ' || verdict
            || CASE WHEN prob IS NULL THEN '' ELSE ' at P ' || printf('%.3f', prob) END || ']'),
       reviewer, checkpoint, prob, created
FROM verdicts_v1;
DROP TABLE verdicts_v1;
"""

# The latest row per patch: the current verdict. seq is monotonic, so max(seq) is the newest.
_LATEST = """
SELECT v.* FROM verdicts v
JOIN (SELECT patch_id, MAX(seq) AS seq FROM verdicts WHERE dataset = ? GROUP BY patch_id) last
  ON v.seq = last.seq
ORDER BY v.seq
"""


class ReviewStore:
    """Verdicts kept in one SQLite file (created on first use).

    Args:
        path: the database file; its folder is created when missing.
        timeout: seconds a writer waits for another writer's lock before failing.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        if self.path.is_dir():
            raise ValueError(f"the verdict store {self.path} is a folder: name a file (an existing store, or "
                             "a new name to start one)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                _migrate(con)
        except sqlite3.DatabaseError as e:  # not SQLite, damaged, or not readable: nothing is written
            raise ValueError(f"{self.path} cannot be opened as a verdict store ({e}): name an SQLite store "
                             "this app wrote, or a new file name to start one") from e

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived autocommit connection to the store's file (the other review tables use it too)."""
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            yield con
        finally:
            con.close()

    def record(self, dataset: str, patch_id: str, verdict: str, reviewer: str, note: str = "",
               checkpoint: str = "", prob: float | None = None) -> int:
        """Appends a verdict and returns its sequence number.

        Args:
            dataset: the dataset key (the app uses the dataset folder's resolved path).
            patch_id: the patch id within the dataset.
            verdict: one of VERDICTS.
            reviewer: who gave it; must not be blank.
            note: free text.
            checkpoint: the model whose prediction was reviewed, if any.
            prob: that model's probability for the patch, if any.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {list(VERDICTS)}")
        if not reviewer or not reviewer.strip():
            raise ValueError("a verdict needs a reviewer name: enter yours in the sidebar")
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self.connect() as con:
            cur = con.execute(
                "INSERT INTO verdicts (dataset, patch_id, verdict, note, reviewer, checkpoint, prob, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset, str(patch_id), verdict, note.strip(), reviewer.strip(), checkpoint,
                 None if prob is None else float(prob), created))
            return int(cur.lastrowid)

    def tag(self, dataset: str, patch_ids: Sequence[str], tag: str, reviewer: str) -> int:
        """Tags patches (a selection drawn on the Map page, say) in one transaction; returns how many
        were newly tagged.

        Tags are kept like verdicts: appended, never changed. A patch that already has the tag gets no
        second row, so a form sent twice (Enter, then the button) tags each patch once.
        """
        tag = tag.strip()
        if not tag or len(tag) > 64:
            raise ValueError("a tag is 1 to 64 characters, for example 'stain batch 3' or 'blurred'")
        if not reviewer or not reviewer.strip():
            raise ValueError("a tag needs a reviewer name: enter yours in the sidebar")
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        rows = [(dataset, str(p), tag, reviewer.strip(), created, dataset, str(p), tag)
                for p in dict.fromkeys(patch_ids)]
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                # made here, not on opening: a store on a full disk still opens to be read
                con.execute("CREATE INDEX IF NOT EXISTS tags_patch ON tags (dataset, tag, patch_id)")
                before = con.total_changes
                con.executemany("INSERT INTO tags (dataset, patch_id, tag, reviewer, created) "
                                "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM tags "
                                "WHERE dataset = ? AND patch_id = ? AND tag = ?)", rows)
                added = con.total_changes - before
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return added

    def tags(self, dataset: str) -> pd.DataFrame:
        """Each (patch_id, tag) given on a dataset once, with who tagged it first."""
        with self.connect() as con:
            # SQLite takes the bare columns from the row MIN(seq) picks: the first time the tag was given
            rows = con.execute("SELECT patch_id, tag, reviewer, MIN(seq) FROM tags WHERE dataset = ? "
                               "GROUP BY patch_id, tag ORDER BY tag, MIN(seq)", (dataset,)).fetchall()
        return pd.DataFrame([r[:3] for r in rows], columns=["patch_id", "tag", "reviewer"])

    def _query(self, sql: str, params: Sequence) -> pd.DataFrame:
        with self.connect() as con:
            rows = con.execute(sql, params).fetchall()
        return pd.DataFrame(rows, columns=COLUMNS)

    def latest(self, dataset: str) -> pd.DataFrame:
        """The current verdict of every reviewed patch of a dataset, one row per patch."""
        return self._query(_LATEST, (dataset,))

    def history(self, dataset: str, patch_id: str | None = None) -> pd.DataFrame:
        """Every verdict given (for one patch, or the whole dataset), oldest first."""
        if patch_id is None:
            return self._query("SELECT * FROM verdicts WHERE dataset = ? ORDER BY seq", (dataset,))
        return self._query("SELECT * FROM verdicts WHERE dataset = ? AND patch_id = ? ORDER BY seq",
                           (dataset, str(patch_id)))


def default_db() -> str:
    """The verdict store the app and the CLI share: $PCAM_REVIEW_DB, else models/reviews.sqlite."""
    return os.environ.get("PCAM_REVIEW_DB") or str(Path(__file__).resolve().parents[2] / "models" /
                                                   "reviews.sqlite")


def _migrate(con: sqlite3.Connection) -> None:
    """Rewrites a store of agree/disagree verdicts to tumour/normal/unsure (`_MIGRATE`), once, atomically:
    the check runs again inside the write lock, so two processes opening an old store migrate it once."""
    def old() -> bool:
        row = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'verdicts'")
        sql = row.fetchone()
        return sql is not None and "'agree'" in sql[0]

    if not old():
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        if old():
            for statement in filter(str.strip, _MIGRATE.split(";")):
                con.execute(statement)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def priority(prob: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """How much a patch needs a reviewer, in [0, 2]: the model's doubt (1 at p = 0.5, 0 at p = 0 or 1)
    plus twice the spread of its test-time-augmentation views (views that disagree)."""
    doubt = 1.0 - np.abs(2.0 * np.asarray(prob, np.float64) - 1.0)
    return doubt + 2.0 * np.clip(np.nan_to_num(np.asarray(spread, np.float64)), 0.0, 0.5)


OUTCOMES = ("any", "correct", "false positive", "false negative")
VERDICT_FILTERS = ("any", "not reviewed", *VERDICTS, "differs from the label", "differs from the model")
THRESHOLD = 0.5  # P(tumour) at or above it is a tumour prediction


def review_table(store, split: str, verdicts: pd.DataFrame, preds: pd.DataFrame | None) -> pd.DataFrame:
    """One row per patch of a split: index, id, label, verdict (None when not reviewed); with predictions
    also prob, spread, priority (see `priority`) and loss (cross-entropy against the label, NaN unlabelled).

    Args:
        store: the PatchStore.
        split: a split name of the store.
        verdicts: `ReviewStore.latest(dataset)`: one current verdict per patch id.
        preds: a predictions table (index, prob, spread) of the split, or None without a model; rows it
            lacks (a split still being scored) get NaN prob and priority, which no model filter keeps.
    """
    idx = store.split_indices(split)
    table = pd.DataFrame({"index": idx, "id": store.ids[idx], "label": store.labels[idx]})
    current = dict(zip(verdicts["patch_id"], verdicts["verdict"], strict=True))
    table["verdict"] = table["id"].map(current).astype(object).where(table["id"].isin(current), None)
    if preds is not None:
        by_index = preds.set_index("index")
        table["prob"] = by_index["prob"].reindex(idx).to_numpy(np.float64)
        table["spread"] = by_index["spread"].reindex(idx).fillna(0.0).to_numpy(np.float64)
        table["priority"] = priority(table["prob"], table["spread"])
        p_true = np.where(table["label"] == 1, table["prob"], 1.0 - table["prob"])
        table["loss"] = np.where(table["label"] >= 0, -np.log(np.clip(p_true, 1e-7, 1.0)), np.nan)
    return table


def _verdict_mask(table: pd.DataFrame, verdict: str) -> np.ndarray:
    """The rows whose current verdict matches a VERDICT_FILTERS choice."""
    answered = table["verdict"].isin(["tumour", "normal"]).to_numpy()
    says_tumour = (table["verdict"] == "tumour").to_numpy()
    if verdict == "any":
        return np.ones(len(table), bool)
    if verdict == "not reviewed":
        return table["verdict"].isna().to_numpy()
    if verdict == "differs from the label":
        given = table["label"].to_numpy()
        return answered & (given >= 0) & (says_tumour != (given == 1))
    if verdict == "differs from the model":
        if "prob" not in table:
            raise ValueError("filters on predictions need a model: the table has no prob column")
        return answered & (says_tumour != (table["prob"].to_numpy() >= THRESHOLD))
    return (table["verdict"] == verdict).to_numpy()


def _check_choices(**choices: str) -> None:
    allowed = {"label": ("any", "tumour", "normal"), "verdict": VERDICT_FILTERS,
               "predicted": ("any", "tumour", "normal"), "outcome": OUTCOMES}
    for name, value in choices.items():
        if value not in allowed[name]:
            raise ValueError(f"{name} {value!r} is not one of {list(allowed[name])}")


def select(table: pd.DataFrame, label: str = "any", verdict: str = "any", predicted: str = "any",
           outcome: str = "any", prob: tuple[float, float] = (0.0, 1.0), min_priority: float = 0.0,
           queue: bool = False, sort: tuple[str, bool] | None = None, mislabelled: bool = False,
           ids=None) -> pd.DataFrame:
    """The rows of a `review_table` a reviewer asked for, in the order to show them.

    Args:
        label: "any", "tumour" or "normal" (the given label).
        verdict: one of VERDICT_FILTERS.
        predicted: "any", "tumour" or "normal": the model's call at THRESHOLD.
        outcome: one of OUTCOMES: "false positive" is a normal patch called tumour, "false negative" a
            tumour patch called normal; unlabelled patches are none of them.
        prob: the closed range of P(tumour) to keep.
        min_priority: keep patches at least this uncertain (`priority`).
        queue: the review queue: unreviewed patches first, each group by priority, highest first.
        sort: (column, ascending) when not queued; None keeps the dataset order.
        mislabelled: only the patches whose label cleanlab flags (`crossval.label_issues`: the table needs
            its quality and issue columns), least trustworthy label first; overrides sort and queue.
        ids: keep only these patch ids (a selection drawn on the Map page, a duplicate filter); None: all.

    Raises:
        ValueError: an unknown choice, or a model filter on a table without predictions.
    """
    _check_choices(label=label, verdict=verdict, predicted=predicted, outcome=outcome)
    has_preds = "prob" in table
    if not has_preds and (predicted != "any" or outcome != "any" or min_priority > 0 or prob != (0.0, 1.0)):
        raise ValueError("filters on predictions need a model: the table has no prob column")
    mask = np.ones(len(table), bool)
    given = table["label"].to_numpy()
    if label != "any":
        mask &= given == (1 if label == "tumour" else 0)
    mask &= _verdict_mask(table, verdict)
    if has_preds:
        p = table["prob"].to_numpy()
        called = p >= THRESHOLD
        if predicted != "any":
            mask &= called == (predicted == "tumour")
        if outcome != "any":
            mask &= given >= 0
            mask &= {"correct": called == (given == 1), "false positive": called & (given == 0),
                     "false negative": ~called & (given == 1)}[outcome]
        mask &= (p >= prob[0]) & (p <= prob[1]) & (table["priority"].to_numpy() >= min_priority)
    if mislabelled:
        if "issue" not in table:
            raise ValueError("the label check needs a finished crossval of this dataset (python -m pcam_core "
                             "crossval)")
        mask &= table["issue"].fillna(False).to_numpy(bool)
    if ids is not None:
        mask &= table["id"].isin(ids).to_numpy()
    shown = table[mask]
    if mislabelled:
        return shown.sort_values("quality", kind="stable")
    if queue:
        reviewed = shown["verdict"].notna().to_numpy()
        doubt = -shown["priority"].to_numpy() if has_preds else np.zeros(len(shown))
        return shown.iloc[np.lexsort((np.arange(len(shown)), doubt, reviewed))]
    if sort is not None:
        column, ascending = sort
        return shown.sort_values(column, ascending=ascending, kind="stable")
    return shown
