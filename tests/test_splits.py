"""Which patches train and which validate: the stratified split, and a run's held-out patches read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcam_core.data.readers import open_dataset
from pcam_core.data.splits import holdout_indices, split_train_val
from pcam_core.data.store import PatchStore
from pcam_core.runs.config import TrainConfig
from pcam_core.runs.folder import RunFolder


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


def test_a_grouped_split_keeps_every_group_on_one_side_and_the_tumour_share(demo_dir, tmp_path):
    from pcam_core.data.splits import read_groups

    store = open_dataset(demo_dir)
    train = store.split_indices("train")
    rng = np.random.default_rng(0)
    groups = pd.DataFrame({"id": store.ids[train], "group": [f"slide-{g}" for g in rng.integers(0, 40,
                                                                                               len(train))]})
    groups.to_csv(tmp_path / "groups.csv", index=False)
    cfg = TrainConfig(data=str(demo_dir), groups=str(tmp_path / "groups.csv"), val_frac=0.2)
    tr, val = split_train_val(store, cfg)
    by_id = dict(zip(groups["id"], groups["group"], strict=True))
    assert not {by_id[i] for i in store.ids[tr]} & {by_id[i] for i in store.ids[val]}
    assert abs(store.labels[val].mean() - store.labels[tr].mean()) < 0.05  # stratified within 5 points
    assert 0.1 < len(val) / len(train) < 0.3

    from pcam_core.training.crossval import assign_folds

    fold = assign_folds(store.ids[train], store.labels[train], 4, 0, read_groups(store, cfg.groups)[train])
    per_group = pd.Series(fold).groupby(groups["group"].to_numpy()).nunique()
    assert (per_group == 1).all()  # a slide in one fold only
    shares = pd.Series(store.labels[train]).groupby(fold).mean()
    assert shares.max() - shares.min() < 0.1


@pytest.mark.parametrize("rows, message", [(lambda ids: [("not-a-patch", "a")], "1 id\\(s\\) in .* not in"),
                                           (lambda ids: [(ids[0], "a")], "599 of the 600 labelled training"),
                                           (None, "lacks column")])
def test_bad_groups_files_say_what_is_wrong(demo_dir, tmp_path, rows, message):
    from pcam_core.data.splits import read_groups

    store = open_dataset(demo_dir)
    path = tmp_path / "groups.csv"
    if rows is None:
        path.write_text("id,slide\nx,a\n")
    else:
        pd.DataFrame(rows(store.ids), columns=["id", "group"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message):
        read_groups(store, str(path))


def test_pcam_meta_files_group_the_folds_by_slide(tmp_path):
    import h5py

    from pcam_core.data.splits import PCAM_META, default_groups, read_groups
    from pcam_core.training.crossval import assign_folds

    n = 40
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((n, 96, 96, 3), np.uint8))
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=(np.arange(n) % 2).reshape(n, 1, 1, 1).astype(np.uint8))
    slides = [f"tumor_{i % 8:03d}" for i in range(n)]
    pd.DataFrame({"coord_y": 0, "coord_x": 0, "tumor_patch": False, "center_tumor_patch": False,
                  "wsi": slides}).to_csv(tmp_path / "camelyonpatch_level_2_split_train_meta.csv", index=False)
    store = open_dataset(tmp_path)
    cfg = default_groups(TrainConfig(data=str(tmp_path)))
    assert cfg.groups == PCAM_META  # found and recorded
    groups = read_groups(store, cfg.groups)
    assert groups[store.index_of(["train_000009"])[0]] == "tumor_001"
    fold = assign_folds(store.ids, store.labels, 4, 0, groups)
    assert (pd.Series(fold).groupby(groups).nunique() == 1).all()
