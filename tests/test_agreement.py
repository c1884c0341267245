"""Several reviewers' verdicts: the settled labels, Cohen's kappa, the conflict queue, and the labels going
back into training (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from pcam_core.data.readers import open_dataset
from pcam_core.data.splits import relabelled, split_train_val
from pcam_core.review import agreement
from pcam_core.review.verdicts import ReviewStore
from pcam_core.runs.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def history(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """A verdict history from (patch, reviewer, verdict) in the order given."""
    return pd.DataFrame([{"seq": i, "patch_id": p, "reviewer": r, "verdict": v,
                          "created": f"2026-11-27T10:{i:02d}"} for i, (p, r, v) in enumerate(rows)])


ANN = ["tumour", "tumour", "normal", "normal", "unsure", "tumour", "normal", "tumour"]
BEN = ["tumour", "normal", "normal", "normal", "tumour", "tumour", "unsure", "normal"]


def test_kappa_matches_scikit_learn_on_the_patches_both_reviewed():
    rows = [(f"p{i}", "Ann", v) for i, v in enumerate(ANN)] + [(f"p{i}", "Ben", v) for i, v in enumerate(BEN)]
    rows += [("p9", "Ann", "tumour"), ("p0", "Cy", "normal")]  # Ann alone on p9; Cy shares only p0
    rows += [("p5", "Eve", "tumour")]  # Eve shares only p5, and answers it as Ann did
    rows += [("p1", "Ann", "normal"), ("p1", "Ann", "tumour")]  # Ann changed her mind twice: tumour counts
    table = agreement.kappa_table(history(rows)).set_index(["reviewer_a", "reviewer_b"])
    # unsure counts for nothing, in kappa as in the label: the patches both answered yes or no
    answered = [(a, b) for a, b in zip(ANN, BEN, strict=True) if "unsure" not in (a, b)]
    ann, ben = np.array(answered).T
    assert table.loc[("Ann", "Ben"), "patches"] == len(answered) == 6
    assert table.loc[("Ann", "Ben"), "kappa"] == pytest.approx(cohen_kappa_score(ann, ben))
    assert table.loc[("Ann", "Ben"), "agree"] == pytest.approx(np.mean(ann == ben))
    assert table.loc[("Ann", "Cy"), "patches"] == 1
    assert table.loc[("Ann", "Cy"), "kappa"] == pytest.approx(cohen_kappa_score(["tumour"], ["normal"]))
    assert np.isnan(table.loc[("Ann", "Eve"), "kappa"])  # one answer throughout: kappa is 0/0, shown as n/a
    rows += [("q1", "Dee", "normal")]
    none = agreement.kappa_table(history(rows)).set_index(["reviewer_a", "reviewer_b"])
    assert none.loc[("Ann", "Dee"), "patches"] == 0 and np.isnan(none.loc[("Ann", "Dee"), "kappa"])


def test_settled_labels_follow_the_written_rule():
    rows = [("a", "Ann", "tumour"), ("a", "Ben", "tumour"),  # agreed
            ("b", "Ann", "tumour"), ("b", "Ben", "normal"), ("b", "Cy", "normal"),  # majority normal
            ("c", "Ann", "tumour"), ("c", "Ben", "normal"),  # conflict
            ("d", "Ann", "unsure"),  # only unsure
            ("e", "Ann", "normal"), ("e", "Ben", "unsure"),  # unsure counts for nothing: agreed normal
            ("f", "Ann", "normal"), ("f", "Ann", "tumour")]  # a changed mind: the latest counts
    settled = agreement.settled_labels(history(rows)).set_index("id")
    assert settled["label"].to_dict() == {"a": 1, "b": 0, "c": -1, "d": -1, "e": 0, "f": 1}
    assert settled["settled"].to_dict() == {"a": "agreed", "b": "majority", "c": "conflict", "d": "unsure",
                                            "e": "agreed", "f": "agreed"}


def test_the_conflict_queue_puts_even_splits_first():
    rows = [("x", "Ann", "tumour"), ("x", "Ben", "normal"), ("x", "Cy", "normal"),  # 1 to 2
            ("y", "Ann", "tumour"), ("y", "Ben", "normal"),  # a tie, 2 reviewers
            ("z", "Ann", "tumour"), ("z", "Ben", "unsure"),  # differ by unsure only
            ("w", "Ann", "normal"), ("w", "Ben", "tumour"), ("w", "Cy", "tumour"), ("w", "Dee", "normal"),
            ("v", "Ann", "tumour"), ("v", "Ben", "tumour"),  # agreed: not in the queue
            ("u", "Cy", "normal"), ("u", "Dee", "tumour")]  # a tie, 2 reviewers, later than y
    queue = agreement.conflicts(history(rows))
    assert queue["id"].tolist() == ["w", "u", "y", "x"]  # z differs by an unsure only: no disagreement
    assert queue.set_index("id").loc["x", "reviewers"] == "Ann: tumour, Ben: normal, Cy: normal"
    # one definition: the ties in the queue are the conflicts the settled labels leave out
    settled = agreement.settled_labels(history(rows))
    ties = set(settled.loc[settled["settled"] == "conflict", "id"])
    assert set(queue.loc[queue["settled"] == "conflict", "id"]) == ties == {"w", "u", "y"}


def test_a_name_typed_in_another_case_or_spacing_is_the_same_reviewer():
    rows = [("a", "Alice", "tumour"), ("a", "Bob", "normal"), ("b", "alice ", "normal"),
            ("b", "Bob", "normal"), ("a", " ALICE", "normal")]  # a changed mind, typed otherwise
    latest = agreement.per_reviewer(history(rows))
    assert sorted(set(latest["reviewer"])) == ["Alice", "Bob"]
    assert latest.set_index(["patch_id", "reviewer"]).loc[("a", "Alice"), "verdict"] == "normal"
    assert agreement.kappa_table(history(rows))[["reviewer_a", "reviewer_b", "patches"]].values.tolist() == [
        ["Alice", "Bob", 2]]
    assert agreement.settled_labels(history(rows)).set_index("id")["settled"].to_dict() == {"a": "agreed",
                                                                                           "b": "agreed"}


def test_reviewer_table_counts_and_agreement():
    rows = [("a", "Ann", "tumour"), ("b", "Ann", "normal"), ("c", "Ann", "unsure"), ("a", "Ben", "normal")]
    labels = pd.Series({"a": 1, "b": 1, "c": 0})
    probs = pd.Series({"a": 0.9, "b": 0.2, "c": 0.5})
    table = agreement.reviewer_table(history(rows), labels, probs).set_index("reviewer")
    assert table.loc["Ann", ["patches", "tumour", "normal", "unsure"]].tolist() == [3, 1, 1, 1]
    assert table.loc["Ann", "agrees with the label"] == 0.5  # a yes on a tumour, a no on a tumour
    assert table.loc["Ann", "agrees with the model"] == 1.0
    assert table.loc["Ben", "agrees with the label"] == 0.0


@pytest.mark.slow
def test_reviewed_labels_reach_training(demo_dir, tmp_path):
    """The CLI writes what the reviewers settled on; train --labels uses it (every label flipped: the
    model learns the opposite) and --exclude-ids leaves the conflicts out."""
    store = open_dataset(demo_dir)
    key = str(store.root.resolve())
    db = ReviewStore(tmp_path / "reviews.sqlite")
    train = store.split_indices("train")
    for i in train:  # Ann says the opposite of every given label; Ben agrees with her on all but 5
        opposite = "normal" if store.labels[i] == 1 else "tumour"
        db.record(key, store.ids[i], opposite, "Ann")
    for i in train[:5]:
        db.record(key, store.ids[i], "tumour" if store.labels[i] == 1 else "normal", "Ben")
    db.record(key, "gone-patch", "tumour", "Ann")  # a verdict on a patch no longer in the data
    done = subprocess.run([sys.executable, "-m", "pcam_core", "reviewed-labels", "--data", str(demo_dir),
                           "--db", str(tmp_path / "reviews.sqlite"), "--out", str(tmp_path / "labels.csv"),
                           "--exclude-out", str(tmp_path / "exclude.csv")], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "1 reviewed patch(es) are no longer in" in done.stdout and "5 conflicting" in done.stdout
    labels = pd.read_csv(tmp_path / "labels.csv", dtype={"id": str})
    assert len(labels) == len(train) - 5
    assert set(pd.read_csv(tmp_path / "exclude.csv", dtype={"id": str})["id"]) == set(store.ids[train[:5]])

    cfg = TrainConfig(data=str(demo_dir), model="base_cnn", crop=48, epochs=3, batch_size=32, device="cpu",
                      labels=str(tmp_path / "labels.csv"), exclude_ids=str(tmp_path / "exclude.csv"),
                      out=str(tmp_path / "run"))
    new_labels, changed = relabelled(store, cfg.labels)
    assert changed == len(train) - 5
    tr, val = split_train_val(store, cfg)
    assert not set(store.ids[np.concatenate([tr, val])]) & set(store.ids[train[:5]])
    done = subprocess.run([sys.executable, "-m", "pcam_core", "train", "--data", str(demo_dir), "--model",
                           "base_cnn", "--crop", "48", "--epochs", "3", "--batch-size", "32", "--device",
                           "cpu", "--labels", cfg.labels, "--exclude-ids", cfg.exclude_ids, "--out", cfg.out],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    assert TrainConfig.load(tmp_path / "run" / "config.json").labels == cfg.labels  # recorded with the run
    from pcam_core.inference import infer

    preds = infer.predictions_table([str(tmp_path / "run")], store, "holdout")
    assert roc_auc_score(preds["label"], preds["prob"]) < 0.2  # it learned the reviewers' (opposite) labels


@pytest.mark.parametrize("text, message", [("id,verdict\nx,1\n", "lacks column"),
                                           ("id,label\nx,2\n", "other than 0 or 1"),
                                           ("id,label\nnot-a-patch,1\n", "not in")])
def test_bad_labels_files_are_refused_with_a_reason(demo_dir, tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        relabelled(open_dataset(demo_dir), path)
