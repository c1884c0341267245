"""Metrics against values worked out by hand on small examples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pcam_core.inference import metrics

# 4 negatives, 4 positives; of the 16 (positive, negative) pairs the positive scores higher in
# 1 + 2 + 4 + 4 = 11 and ties in 1 (0.6 vs 0.6): AUC = (11 + 0.5) / 16
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.3, 0.6, 0.7, 0.2, 0.6, 0.8, 0.9])


def test_auc_by_hand():
    assert metrics.roc_auc(Y, P) == pytest.approx(11.5 / 16)


def test_pr_auc_by_hand():
    # ranked: 0.9 P, 0.8 P, 0.7 N, 0.6 P+N (tied), 0.3 N, 0.2 P, 0.1 N; average precision sums the
    # precision at each cut that raises recall by 1/4: at 0.9 1/1, 0.8 2/2, 0.6 3/5, 0.2 4/7
    assert metrics.pr_auc(Y, P) == pytest.approx((1 + 1 + 3 / 5 + 4 / 7) / 4)


def test_threshold_metrics_by_hand():
    c = metrics.confusion(Y, P, 0.5)
    assert c == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    m = metrics.at_threshold(Y, P, 0.5)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))


def test_youden_threshold_by_hand():
    # J = tpr - fpr at each cut: >=0.9 1/4, >=0.8 2/4, >=0.6 3/4 - 2/4, >=0.2 4/4 - 3/4: the best is 0.8
    assert metrics.youden_threshold(Y, P) == pytest.approx(0.8)


def test_brier_and_calibration_by_hand():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 0.85])
    assert metrics.brier(y, p) == pytest.approx((0.05**2 + 0.85**2 + 0.05**2 + 0.85**2) / 4)
    table = metrics.calibration(y, p, n_bins=2)
    assert table["count"].tolist() == [2, 2]
    assert table["mean_prob"].tolist() == pytest.approx([0.1, 0.9])
    assert table["frac_positive"].tolist() == pytest.approx([0.5, 0.5])
    assert metrics.ece(y, p, n_bins=2) == pytest.approx(0.4)


def test_calibration_keeps_empty_bins_and_puts_one_in_the_last():
    table = metrics.calibration([0, 1], [0.0, 1.0], n_bins=10)
    assert len(table) == 10
    assert table["count"].tolist() == [1] + [0] * 8 + [1]


def test_curves_have_the_ends():
    roc = metrics.roc_points(Y, P)
    assert (roc.iloc[0].fpr, roc.iloc[0].tpr) == (0, 0) and (roc.iloc[-1].fpr, roc.iloc[-1].tpr) == (1, 1)
    assert roc["threshold"].max() <= 1
    pr = metrics.pr_points(Y, P)
    assert pr["recall"].iloc[-1] == 0 and pr["precision"].iloc[-1] == 1


def test_auc_ci_is_the_textbook_bootstrap_with_sklearn():
    # the fast CI must equal resampling patches with replacement and asking sklearn for each AUC
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)  # rounding makes ties
    draws = np.random.default_rng(7)
    aucs = [roc_auc_score(y[idx], p[idx]) for idx in (draws.integers(0, 300, 300) for _ in range(200))]
    expected = np.percentile(aucs, [2.5, 97.5])
    assert metrics.auc_ci(y, p, n_boot=200, seed=7) == pytest.approx(tuple(expected), abs=1e-12)


def test_auc_ci_brackets_the_auc_and_narrows_with_n():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    p = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.25, 4000), 0, 1)
    low, high = metrics.auc_ci(y, p, n_boot=300)
    auc = metrics.roc_auc(y, p)
    assert low < auc < high and high - low < 0.05
    low_small, high_small = metrics.auc_ci(y[:200], p[:200], n_boot=300)
    assert high_small - low_small > high - low


def test_summary_is_flat_and_json_ready():
    import json

    s = metrics.summary(Y, P, n_boot=50)
    json.dumps(s)
    assert s["n"] == 8 and s["n_positive"] == 4 and s["tp"] == 3
    assert s["roc_auc_ci_low"] <= s["roc_auc"] <= s["roc_auc_ci_high"]


@pytest.mark.parametrize("labels, probs, message", [
    ([0, 1, -1], [0.2, 0.3, 0.4], "labels must be 0 or 1"),
    ([0, 1], [0.2, 1.3], "within \\[0, 1\\]"),
    ([0, 1], [0.2], "2 labels but 1"),
    ([], [], "no labelled"),
])
def test_bad_input(labels, probs, message):
    with pytest.raises(ValueError, match=message):
        metrics.summary(labels, probs)


def test_one_class_is_refused_for_auc():
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_auc([1, 1, 1], [0.2, 0.4, 0.9])
