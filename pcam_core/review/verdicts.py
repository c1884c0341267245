"""Review: what a verdict is, and the table a reviewer filters (outcomes, doubt, the review queue).

A verdict answers one question about the tissue: is there tumour in the centre 32 x 32? "tumour",
"normal" or "unsure". Whether it agrees with the given label or with the model is derived, never asked.
Every verdict a reviewer gives is a new row in the review store (`store.ReviewStore`: SQLite or
PostgreSQL); nothing is updated or deleted, so the history of a patch is its rows in order and its
current verdict is the latest one.

`review_table` joins a split's patches with their current verdicts and a model's predictions;
`select` is what the Browse filters mean ("false negative", "not reviewed", the review queue), so the
app, the command line and the tests share one definition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pcam_core.review.store import ANSWERS, COLUMNS, VERDICTS, ReviewStore, StoreError, default_db

__all__ = ["ANSWERS", "COLUMNS", "OUTCOMES", "THRESHOLD", "VERDICTS", "VERDICT_FILTERS", "ReviewStore",
           "StoreError", "default_db", "priority", "review_table", "select"]


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
