"""Cross-validated predictions and the label errors cleanlab finds in them (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcam_core.data.demo import noisy_copy
from pcam_core.runs.config import TrainConfig
from pcam_core.training import crossval

REPO = Path(__file__).resolve().parents[1]
FAST = dict(model="base_cnn", crop=48, epochs=8, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def noisy(demo_dir, tmp_path_factory):
    """The 600-patch demo with 5% of its training labels flipped, and a 3-fold crossval of it (CLI)."""
    root = tmp_path_factory.mktemp("noisy")
    flipped = noisy_copy(demo_dir, root / "data", share=0.05, seed=0)
    out = root / "cv"
    done = subprocess.run([sys.executable, "-m", "pcam_core", "crossval", "--data", str(root / "data"),
                           "--folds", "3", "--out", str(out), "--model", "base_cnn", "--crop", "48",
                           "--epochs", "8", "--batch-size", "32", "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "data", out, flipped, done.stdout


@pytest.mark.slow
def test_every_labelled_patch_gets_one_out_of_fold_probability(noisy):
    data, out, _, stdout = noisy
    oof = crossval.read_oof(out)
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(labels["id"]) and oof["id"].is_unique
    folds = pd.read_csv(out / "folds.csv", dtype={"id": str}).merge(oof, on="id", suffixes=("", "_oof"))
    assert (folds["fold"] == folds["fold_oof"]).all()  # each patch scored by the fold that held it out
    for k in (1, 2, 3):  # each fold's run never trained on its held-out patches
        held = set(pd.read_csv(out / f"fold-{k}" / "val_ids.csv", dtype={"id": str})["id"])
        assert held == set(oof.loc[oof["fold"] == k, "id"])
    share = oof.groupby("fold")["label"].mean()  # stratified: each fold keeps the tumour share
    assert share.max() - share.min() < 0.05
    assert "out-of-fold AUC" in stdout and "likely label errors" in stdout


def test_cleanlab_finds_the_flipped_labels_among_its_worst_five_percent(noisy):
    _, out, flipped, _ = noisy
    issues = pd.read_csv(out / "label_issues.csv", dtype={"id": str})
    top = set(issues.head(round(0.05 * len(issues)))["id"])
    recall = len(top & flipped) / len(flipped)
    precision = len(top & flipped) / len(top)
    print(f"flipped {len(flipped)}, top 5%: recall {recall:.2f}, precision {precision:.2f}; "
          f"cleanlab flags {int(issues['issue'].sum())}")
    assert recall >= 0.8
    assert issues["quality"].is_monotonic_increasing
    assert issues["rank"].tolist() == list(range(1, len(issues) + 1))


def test_a_finished_crossval_is_kept_and_other_settings_are_refused(noisy):
    data, out, _, _ = noisy
    before = (out / "fold-2" / "best.pt").stat().st_mtime_ns
    events = list(crossval.crossval(TrainConfig(data=str(data), **FAST), 3, out))
    assert [e["reused"] for e in events if e["type"] == "fold_done"] == [True, True, True]
    assert (out / "fold-2" / "best.pt").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings.*epochs"):
        list(crossval.crossval(TrainConfig(data=str(data), **{**FAST, "epochs": 2}), 3, out))


def test_fold_counts_that_cannot_work_are_refused():
    ids = np.array([f"p{i}" for i in range(10)])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="at least 2 folds"):
        crossval.assign_folds(ids, labels, 1, 0)
    with pytest.raises(ValueError, match="3 tumour.*--folds 3"):
        crossval.assign_folds(ids, labels, 4, 0)
    fold = crossval.assign_folds(ids, labels, 3, 0)
    assert sorted(set(fold)) == [1, 2, 3] and all(labels[fold == k].sum() == 1 for k in (1, 2, 3))


def test_label_issues_cli_and_its_errors(noisy, tmp_path):
    _, out, _, _ = noisy
    done = subprocess.run([sys.executable, "-m", "pcam_core", "label-issues", "--crossval", str(out), "--out",
                           str(tmp_path / "issues.csv")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(tmp_path / "issues.csv").columns.tolist() == list(crossval.ISSUE_COLUMNS)
    missing = subprocess.run([sys.executable, "-m", "pcam_core", "label-issues", "--crossval", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode != 0
    assert len(missing.stderr.strip().splitlines()) == 1 and "run `crossval`" in missing.stderr
    # a fold whose training diverged left NaN: one line naming it, not "0 flagged" over the rest
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    oof.assign(prob=np.where(oof["fold"] == 1, np.nan, oof["prob"])).to_csv(diverged / "oof.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "pcam_core", "label-issues", "--crossval", str(diverged)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "flagged" not in done.stdout
    assert len(done.stderr.strip().splitlines()) == 1 and "fold(s) 1" in done.stderr, done.stderr
    assert not (diverged / "label_issues.csv").exists()


def test_folds_leave_out_the_excluded_and_stratify_on_the_labels_given(demo_dir, tmp_path):
    from pcam_core.data.readers import open_dataset

    store = open_dataset(demo_dir)
    train = store.split_indices("train")
    pd.DataFrame({"id": store.ids[train[:50]]}).to_csv(tmp_path / "exclude.csv", index=False)
    relabel = pd.DataFrame({"id": store.ids[train], "label": 1})  # every patch called tumour but one
    relabel.loc[0, "label"] = 0
    relabel.to_csv(tmp_path / "labels.csv", index=False)
    cfg = TrainConfig(data=str(demo_dir), **FAST, exclude_ids=str(tmp_path / "exclude.csv"))
    table = crossval._setup(cfg, 3, tmp_path / "cv")
    assert len(table) == len(train) - 50 and not set(table["id"]) & set(store.ids[train[:50]])
    with pytest.raises(ValueError, match="1 normal"):  # the folds see the labels the runs will train on
        crossval._setup(TrainConfig(data=str(demo_dir), **FAST, labels=str(tmp_path / "labels.csv")), 3,
                        tmp_path / "cv2")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_give_one_crossval(demo_dir, tmp_path):
    import os

    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pcam_core", "crossval", "--data", str(demo_dir), "--folds", "2", "--model", "base_cnn",
           "--crop", "32", "--batch-size", "16", "--epochs", "1", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    oof = crossval.read_oof(out)
    assert len(oof) == 600 and oof["id"].is_unique and set(oof["fold"]) == {1, 2}
    for k in (1, 2):
        assert (out / f"fold-{k}" / "best.pt").is_file()
    assert done.stdout.count("out-of-fold AUC") == 1  # rank 0 alone reports
