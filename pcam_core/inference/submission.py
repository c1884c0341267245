"""Kaggle submission CSV: `id,label` with label the tumour probability, one row per test id.

Kaggle scores ROC AUC on the label column, so it must hold probabilities: the reference notebook's hard
0/1 labels cost several AUC points, and the validator refuses them unless asked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pcam_core.atomic import atomic_write

log = logging.getLogger(__name__)

EXAMPLES = 3  # ids quoted per problem


def expected_ids(store) -> np.ndarray:
    """The ids a submission for `store` must hold, in Kaggle's order (sample_submission.csv when present).

    Raises:
        ValueError: the dataset has no test part.
    """
    if "test" not in store.split_names():
        raise ValueError(f"{store.root} has no test part (splits: {', '.join(store.split_names())}); a "
                         "submission needs the unlabelled test patches, e.g. a Kaggle folder with test/")
    sample = Path(store.root) / "sample_submission.csv"
    test_ids = store.ids[store.split_indices("test")]
    if store.layout == "kaggle" and sample.is_file():
        try:
            ids = pd.read_csv(sample, dtype={"id": str}, usecols=["id"])["id"].to_numpy(dtype=str)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{sample} is not a readable submission template ({first}); it needs an id "
                             f"column, one test id a row (or remove it to use the test/ folder)") from e
        if len(ids):
            left_out = len(set(test_ids) - set(ids))
            if left_out:
                log.warning("%s lists %d of the %d test patches; the submission follows it and leaves out "
                            "%d", sample, len(ids), len(test_ids), left_out)
            return ids
    return test_ids


def _quote(ids) -> str:
    ids = list(ids)
    return ", ".join(ids[:EXAMPLES]) + (" ..." if len(ids) > EXAMPLES else "")


def validate_submission(submission, store, allow_hard_labels: bool = False) -> list[str]:
    """Every problem Kaggle (or AUC) would have with a submission; an empty list means it is valid.

    Args:
        submission: a CSV path or a DataFrame with columns id,label.
        store: the dataset the submission is for (its test ids are expected).
        allow_hard_labels: accept labels that are all 0 or 1.
    """
    if isinstance(submission, pd.DataFrame):
        table = submission
    else:
        try:
            table = pd.read_csv(submission, dtype={"id": str, "label": str}, keep_default_na=False)
        except FileNotFoundError:
            return [f"{submission} does not exist"]
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            return [f"{submission} is not a readable CSV: {e}"]
    if list(table.columns) != ["id", "label"]:
        return [f"columns are {list(table.columns)}; Kaggle needs exactly id,label"]
    problems = []
    ids = table["id"].astype(str)
    expected = expected_ids(store)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        problems.append(f"{len(dup)} duplicate id(s): {_quote(dup)}")
    present = set(ids)
    missing = [i for i in expected if i not in present]
    if missing:
        problems.append(f"{len(missing)} test id(s) missing: {_quote(missing)}")
    wanted = set(expected)
    extra = [i for i in ids.unique() if i not in wanted]
    if extra:
        problems.append(f"{len(extra)} id(s) not in the test set: {_quote(extra)}")
    raw = table["label"]
    values = pd.to_numeric(raw, errors="coerce")
    blank = raw.isna() | (raw.astype(str).str.strip() == "")
    if blank.any():
        problems.append(f"{int(blank.sum())} empty label(s), e.g. id {_quote(ids[blank])}")
    text = values.isna() & ~blank
    if text.any():
        problems.append(f"{int(text.sum())} non-numeric label(s), e.g. {raw[text].iloc[0]!r} "
                        f"for id {ids[text].iloc[0]}")
    numbers = values.dropna()
    outside = ~np.isfinite(numbers) | (numbers < 0) | (numbers > 1)
    if outside.any():
        first = numbers[outside]
        problems.append(f"{int(outside.sum())} label(s) outside [0, 1], e.g. {float(first.iloc[0]):g} "
                        f"for id {ids[first.index[0]]}")
    if len(numbers) and numbers.isin([0, 1]).all() and not allow_hard_labels:
        problems.append("every label is 0 or 1: Kaggle scores ROC AUC on probabilities and hard labels cost "
                        "AUC points; write probabilities (or allow hard labels explicitly)")
    return problems


def build_submission(predictions: pd.DataFrame, store) -> pd.DataFrame:
    """The submission table (id, label) from a predictions table with columns id and prob.

    Rows follow Kaggle's order; predictions for ids outside the test set are left out.

    Raises:
        ValueError: a test id has no prediction, or the dataset has no test part.
    """
    if not {"id", "prob"} <= set(predictions.columns):
        raise ValueError(f"predictions have columns {list(predictions.columns)}; need id and prob")
    probs = pd.Series(predictions["prob"].to_numpy(dtype=np.float64), index=predictions["id"].astype(str))
    probs = probs[~probs.index.duplicated()]
    expected = expected_ids(store)
    missing = [i for i in expected if i not in probs.index]
    if missing:
        raise ValueError(f"{len(missing)} test id(s) have no prediction: {_quote(missing)}; they may be "
                         "unreadable files the dataset skipped (run `info`) or ids outside its test part")
    n_extra = len(probs) - len(expected)
    if n_extra > 0:
        log.info("leaving out %d predictions for ids outside the test set", n_extra)
    return pd.DataFrame({"id": expected, "label": probs.loc[expected].to_numpy()})


def write_submission(predictions: pd.DataFrame, store, path, allow_hard_labels: bool = False) -> pd.DataFrame:
    """Build, validate and write the submission CSV atomically; returns the table written.

    Raises:
        ValueError: the submission would be invalid, or `path` cannot be written.
    """
    table = build_submission(predictions, store)
    problems = validate_submission(table, store, allow_hard_labels=allow_hard_labels)
    if problems:
        raise ValueError("the submission would be invalid: " + "; ".join(problems))
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.8g")
    except OSError as e:
        raise ValueError(f"cannot write the submission to {path}: {e.strerror or e}; "
                         "choose a writable path") from e
    log.info("wrote %d rows to %s", len(table), path)
    return table
