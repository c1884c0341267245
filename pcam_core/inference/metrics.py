"""Evaluation of predicted probabilities against 0/1 labels: AUC, threshold metrics, calibration.

scikit-learn does the curve work; the bootstrap confidence interval for ROC AUC is computed here with
one weighted pass per resample (bincount over the sorted scores), so 1,000 resamples of a Kaggle-sized
set take about a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts inputs: labels 0/1 ints, probabilities finite floats in [0, 1]."""
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        raise ValueError("no labelled patches to evaluate")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"labels must be 0 or 1; found {sorted(set(y[bad].tolist()))[:5]} "
                         "(-1 means unknown: evaluate needs labelled patches)")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y, p


def _need_both_classes(y: np.ndarray) -> None:
    if y.min() == y.max():
        raise ValueError(f"AUC needs both classes; every label here is {int(y[0])}")


def roc_auc(labels, probs) -> float:
    y, p = _check(labels, probs)
    _need_both_classes(y)
    return float(roc_auc_score(y, p))


def pr_auc(labels, probs) -> float:
    """Area under the precision-recall curve (average precision, tumour as the positive class)."""
    y, p = _check(labels, probs)
    _need_both_classes(y)
    return float(average_precision_score(y, p))


def confusion(labels, probs, threshold: float = 0.5) -> dict[str, int]:
    """Counts tn, fp, fn, tp with `prob >= threshold` predicted tumour."""
    y, p = _check(labels, probs)
    pred = p >= threshold
    return {
        "tn": int(np.sum(~pred & (y == 0))), "fp": int(np.sum(pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))), "tp": int(np.sum(pred & (y == 1))),
    }


def at_threshold(labels, probs, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity (recall), specificity, precision and F1 at `threshold`; NaN where undefined."""
    c = confusion(labels, probs, threshold)
    tn, fp, fn, tp = c["tn"], c["fp"], c["fn"], c["tp"]

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    precision, sensitivity = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tp + tn, tn + fp + fn + tp),
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "precision": precision,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def youden_threshold(labels, probs) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1."""
    y, p = _check(labels, probs)
    _need_both_classes(y)
    fpr, tpr, thresholds = roc_curve(y, p)
    # roc_curve's first threshold is +inf (nothing predicted positive); 1.0 is the same cut for probabilities
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def roc_points(labels, probs) -> pd.DataFrame:
    """The ROC curve: columns fpr, tpr, threshold."""
    y, p = _check(labels, probs)
    _need_both_classes(y)
    fpr, tpr, thresholds = roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)})


def pr_points(labels, probs) -> pd.DataFrame:
    """The precision-recall curve: columns recall, precision, threshold (NaN on the closing point)."""
    y, p = _check(labels, probs)
    _need_both_classes(y)
    precision, recall, thresholds = precision_recall_curve(y, p)
    return pd.DataFrame({"recall": recall, "precision": precision,
                         "threshold": np.append(thresholds, np.nan)})


def calibration(labels, probs, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table over equal-width bins of [0, 1]: lo, hi, count, mean_prob, frac_positive.

    Empty bins are kept (count 0, NaN means) so every table has `n_bins` rows.
    """
    y, p = _check(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds [edges[i], edges[i+1]); the last bin also holds 1.0
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(which, weights=y, minlength=n_bins) / count
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": count,
                         "mean_prob": mean_prob, "frac_positive": frac_pos})


def ece(labels, probs, n_bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean |mean_prob - frac_positive| over the bins."""
    table = calibration(labels, probs, n_bins)
    filled = table[table["count"] > 0]
    gap = (filled["mean_prob"] - filled["frac_positive"]).abs()
    return float((gap * filled["count"]).sum() / filled["count"].sum())


def brier(labels, probs) -> float:
    """Mean squared difference between probability and label."""
    y, p = _check(labels, probs)
    return float(np.mean((p - y) ** 2))


def _weighted_auc(group: np.ndarray, y: np.ndarray, counts: np.ndarray, n_groups: int) -> float:
    """ROC AUC of a sample given as a count per patch; `group` ranks each patch's score (ties share one)."""
    pos = np.bincount(group, weights=counts * y, minlength=n_groups)
    neg = np.bincount(group, weights=counts * (1 - y), minlength=n_groups)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # each positive beats every negative with a lower score and half-beats the ties
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def auc_ci(labels, probs, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for ROC AUC (resamples lacking a class are dropped)."""
    y, p = _check(labels, probs)
    _need_both_classes(y)
    if not 0 < level < 1:
        raise ValueError(f"level must be within (0, 1), got {level}")
    _, group = np.unique(p, return_inverse=True)
    n_groups = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    aucs = np.array([
        _weighted_auc(group, y, np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)), n_groups)
        for _ in range(n_boot)
    ])
    aucs = aucs[np.isfinite(aucs)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def pr_auc_ci(labels, probs, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for PR AUC (average precision; resamples lacking a class
    are dropped)."""
    y, p = _check(labels, probs)
    _need_both_classes(y)
    if not 0 < level < 1:
        raise ValueError(f"level must be within (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(y), len(y))
        if 0 < y[pick].sum() < len(pick):
            scores.append(average_precision_score(y[pick], p[pick]))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def compare_aucs(labels, probs_a, probs_b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Two models on the same patches: each ROC AUC with its bootstrap interval, and the interval of their
    difference (b - a) from the same resamples (paired: both models see each resample), so a difference
    whose interval excludes 0 is more than the luck of the draw.

    Returns:
        dict with auc_a, auc_b, ci_a, ci_b, diff, diff_ci.
    """
    y, a = _check(labels, probs_a)
    _, b = _check(labels, probs_b)
    _need_both_classes(y)
    ga, gb = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_boot):
        weights = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y))
        pairs.append((_weighted_auc(ga, y, weights, int(ga.max()) + 1),
                      _weighted_auc(gb, y, weights, int(gb.max()) + 1)))
    pairs = np.array(pairs)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    tail = (1 - level) / 2 * 100

    def interval(values):
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    auc_a, auc_b = roc_auc(y, a), roc_auc(y, b)
    return {"auc_a": auc_a, "auc_b": auc_b, "ci_a": interval(pairs[:, 0]), "ci_b": interval(pairs[:, 1]),
            "diff": auc_b - auc_a, "diff_ci": interval(pairs[:, 1] - pairs[:, 0])}


def summary(labels, probs, threshold: float = 0.5, n_boot: int = 1000) -> dict:
    """Every headline number in one flat dict (JSON-ready): AUCs with CI, threshold metrics, calibration.

    Keys: n, n_positive, roc_auc, roc_auc_ci_low/high, pr_auc, threshold, accuracy, sensitivity,
    specificity, precision, f1, tn, fp, fn, tp, youden_threshold, brier, ece.
    """
    y, p = _check(labels, probs)
    _need_both_classes(y)
    low, high = auc_ci(y, p, n_boot=n_boot)
    return {
        "n": int(len(y)), "n_positive": int(y.sum()),
        "roc_auc": roc_auc(y, p), "roc_auc_ci_low": low, "roc_auc_ci_high": high,
        "pr_auc": pr_auc(y, p),
        "threshold": float(threshold), **at_threshold(y, p, threshold), **confusion(y, p, threshold),
        "youden_threshold": youden_threshold(y, p),
        "brier": brier(y, p), "ece": ece(y, p),
    }


def loss_and_auc(labels, probs) -> dict[str, float]:
    """val_loss (binary cross-entropy, probabilities clipped to [1e-6, 1 - 1e-6]) and val_auc (NaN with a
    single class): what training reports per epoch."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 1e-6, 1 - 1e-6)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {"val_loss": loss, "val_auc": auc}
