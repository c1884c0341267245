"""Which patches train and which validate: the stratified split, and a run's held-out patches read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcam_core.config import TrainConfig
from pcam_core.runs import RunFolder
from pcam_core.splits import holdout_indices, split_train_val
from pcam_core.store import PatchStore


def store_of(labels, splits=None, root: Path = Path("/data/fake")) -> PatchStore:
    """A real PatchStore over blank pixels with the given labels and splits."""
    labels = np.asarray(labels, dtype=np.int8)
    splits = splits if splits is not None else ["train"] * len(labels)
    index = pd.DataFrame({"id": [f"p{i:03d}" for i in range(len(labels))], "split": splits, "label": labels,
                          "row": np.arange(len(labels))})
    images = np.zeros((len(labels), 96, 96, 3), np.uint8)
    return PatchStore(root, "folder", index, images, "fp", root / ".cache",
                      pd.DataFrame(columns=["path", "reason"]), pd.DataFrame())


def test_split_is_stratified_seeded_and_disjoint():
    store = store_of([0] * 60 + [1] * 40)
    train, val = split_train_val(store, TrainConfig(data="x", val_frac=0.25))
    assert len(val) == 25 and (store.labels[val] == 1).sum() == 10  # 40% tumour on both sides
    assert not set(train) & set(val) and len(train) + len(val) == 100
    again = split_train_val(store, TrainConfig(data="x", val_frac=0.25))[1]
    other = split_train_val(store, TrainConfig(data="x", val_frac=0.25, seed=1))[1]
    assert list(again) == list(val) and list(other) != list(val)


def test_the_data_own_valid_split_and_an_id_list_win(tmp_path):
    store = store_of([0, 1] * 10 + [0, 1] * 3, ["train"] * 20 + ["valid"] * 6)
    assert list(split_train_val(store, TrainConfig(data="x"))[1]) == list(range(20, 26))
    ids = tmp_path / "val.csv"
    ids.write_text("id\np000\np001\np002\np003\n")
    train, val = split_train_val(store, TrainConfig(data="x", val_ids=str(ids)))
    assert list(val) == [0, 1, 2, 3] and 0 not in train


@pytest.mark.parametrize("labels, splits, message", [
    ([-1] * 10, None, "no training labels"),
    ([1] * 50, None, "only one class"),
    ([0] * 50 + [1], None, "too little data"),
    ([0, 1] * 5 + [-1] * 2, ["train"] * 10 + ["test"] * 2, "unlabelled"),
])
def test_bad_label_sets_are_explained(labels, splits, message, tmp_path):
    ids = tmp_path / "val.csv"
    ids.write_text("id\np010\np011\n")  # the test patches of the last case
    cfg = TrainConfig(data="x", val_frac=0.25, val_ids=str(ids) if message == "unlabelled" else None)
    with pytest.raises(ValueError, match=message):
        split_train_val(store_of(labels, splits), cfg)


def write_run(folder: Path, data: Path, val_ids: list[str]) -> Path:
    run = RunFolder(folder)
    run.start(TrainConfig(data=str(data), out=str(folder)), completed_epochs=None)
    run.save_val_ids(val_ids)
    return folder


def test_holdout_is_what_the_runs_wrote_and_their_intersection(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    store = store_of([0, 1] * 10, root=root)
    a = write_run(tmp_path / "a", root, ["p003", "p001", "p007"])
    b = write_run(tmp_path / "b", root, ["p007", "p003", "p010"])
    assert list(holdout_indices([a], store)) == [1, 3, 7]
    assert list(holdout_indices([a / "best.pt", b], store)) == [3, 7]  # a .pt names its run folder
    c = write_run(tmp_path / "c", root, ["p000"])
    with pytest.raises(ValueError, match="share no patch"):
        holdout_indices([a, c], store)


def test_holdout_of_a_run_on_other_data_or_without_val_ids_is_refused(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    store = store_of([0, 1] * 10, root=root)
    other = write_run(tmp_path / "other", tmp_path / "elsewhere", ["p001"])
    with pytest.raises(ValueError, match="trained on .*elsewhere"):
        holdout_indices([other], store)
    bare = write_run(tmp_path / "bare", root, ["p001"])
    (bare / "val_ids.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no val_ids.csv"):
        holdout_indices([bare], store)
    missing = write_run(tmp_path / "gone", root, ["p001", "zzz"])
    with pytest.raises(ValueError, match="not in"):
        holdout_indices([missing], store)
