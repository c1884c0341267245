"""Which patches train and which validate: one answer for training, the CLI, the app and the benchmarks.

`split_train_val` draws a run's split (a CSV of ids, else the data's own valid split, else stratified by
label and seeded); the run saves the validation ids it drew as val_ids.csv, and `holdout_indices` reads
them back, so "the patches this run held out" is what the run wrote, never a re-derivation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pcam_core import runs
from pcam_core.data.readers import PatchStore
from pcam_core.runs.config import TrainConfig


def split_train_val(store: PatchStore, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Store indices (train, validation): a CSV of ids, else the data's valid split, else stratified val_frac.

    Raises:
        ValueError: no labels, a single class, or a validation split too small to measure AUC.
    """
    train = store.split_indices("train") if "train" in store.split_names() else np.empty(0, np.int64)
    train = train[store.labels[train] >= 0]
    if not len(train):
        raise ValueError(f"{store.root} has no training labels: training needs train_labels.csv (Kaggle), "
                         f"the *_y.h5 files (PCam) or a labels CSV (image folder)")
    excluded = store.index_of(_read_ids(Path(cfg.exclude_ids))) if cfg.exclude_ids else train[:0]
    train = np.setdiff1d(train, excluded)
    if cfg.val_ids:
        val = np.setdiff1d(_listed_ids(store, Path(cfg.val_ids)), excluded)
        train = np.setdiff1d(train, val)
    elif "valid" in store.split_names() and store.has_labels("valid"):
        val = np.setdiff1d(store.split_indices("valid"), excluded)
    else:
        labels = store.labels[train]
        smallest = np.bincount(labels, minlength=2).min()
        if smallest and round(smallest * cfg.val_frac) < 1:
            raise ValueError(f"too little data to validate: the rarer class has {smallest} patches, so "
                             f"val_frac={cfg.val_frac} holds out none of it; raise --val-frac or add data")
        if smallest and cfg.groups:
            groups = read_groups(store, cfg.groups)[train]
            kept, held = grouped_holdout(labels, groups, cfg.val_frac, cfg.seed)
            train, val = train[kept], train[held]
        elif smallest:
            from sklearn.model_selection import train_test_split  # here: `predict` needs none of sklearn

            train, val = train_test_split(train, test_size=cfg.val_frac, stratify=labels,
                                          random_state=cfg.seed)
        else:
            val = train[:0]
    for name, idx in (("training", train), ("validation", val)):
        counts = np.bincount(store.labels[idx], minlength=2)
        if (counts == 0).any():
            raise ValueError(f"the {name} split has only one class ({counts[0]} normal, {counts[1]} tumour): "
                             f"AUC and training need both; check the labels or use more data")
    return np.sort(train), np.sort(val)


PCAM_META = "pcam-meta"  # TrainConfig.groups: PCam's own meta CSVs


def pcam_meta_files(root: str | Path) -> list[Path]:
    """PCam's camelyonpatch_level_2_split_<split>_meta.csv files present in a dataset folder."""
    return [p for split in ("train", "valid", "test")
            if (p := Path(root) / f"camelyonpatch_level_2_split_{split}_meta.csv").is_file()]


def default_groups(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with groups set to PCAM_META when it names none and the data folder has PCam's meta files, so
    that the run's config records the grouping it used."""
    if cfg.groups or not cfg.data or not pcam_meta_files(cfg.data):
        return cfg
    from dataclasses import replace

    return replace(cfg, groups=PCAM_META)


def read_groups(store: PatchStore, source: str) -> np.ndarray:
    """The group of every patch (object array, "" where none is known) from a CSV (id, group) or
    PCAM_META.

    Raises:
        FileNotFoundError, ValueError: no such file, a missing column, ids that are not in the data (how
            many), or labelled training patches without a group (how many).
    """
    groups = np.full(len(store), "", dtype=object)
    if source == PCAM_META:
        files = pcam_meta_files(store.root)
        if not files:
            raise ValueError(f"{store.root} has no camelyonpatch_level_2_split_*_meta.csv for --groups "
                             f"{PCAM_META}")
        for path in files:
            split = path.name.split("_split_")[1].rsplit("_", 1)[0]
            meta = pd.read_csv(path)
            if "wsi" not in meta.columns:
                raise ValueError(f"{path} has no `wsi` column (columns: {list(meta.columns)})")
            ids = [f"{split}_{i:06d}" for i in range(len(meta))]
            known = np.isin(ids, store.ids)
            groups[store.index_of(np.asarray(ids)[known])] = meta["wsi"].astype(str).to_numpy()[known]
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"groups file {path} not found")
        table = pd.read_csv(path, dtype=str)
        missing = [c for c in ("id", "group") if c not in table.columns]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing} (columns: {list(table.columns)}); it "
                             f"needs id and group")
        known = table["id"].isin(set(store.ids))
        if not known.all():
            raise ValueError(f"{int((~known).sum()):,} id(s) in {path} are not in {store.root}, e.g. "
                             f"{table['id'][~known].iloc[0]}; write the groups of this dataset's patches")
        groups[store.index_of(table["id"])] = table["group"].fillna("").to_numpy()
    train = store.split_indices("train") if "train" in store.split_names() else np.empty(0, np.int64)
    train = train[store.labels[train] >= 0]
    lacking = int((groups[train] == "").sum())
    if lacking:
        raise ValueError(f"{lacking:,} of the {len(train):,} labelled training patches have no group in "
                         f"{source}; every one needs one (or leave --groups out)")
    return groups


def grouped_holdout(labels: np.ndarray, groups: np.ndarray, share: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, held out) with about `share` held out, whole groups on one side, stratified by
    label as far as the groups allow (the first fold of scikit-learn's StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / share))
    if len(set(groups)) < n_splits:
        raise ValueError(f"only {len(set(groups))} group(s): holding out {share:.0%} by group needs at least "
                         f"{n_splits}; lower --val-frac's denominator or drop --groups")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return kept, held


def relabelled(store: PatchStore, path: str | Path) -> tuple[np.ndarray, int]:
    """The store's labels with those of a CSV (id, label) put in their place, and how many changed.

    Raises:
        FileNotFoundError, ValueError: no such file, a missing column, a label other than 0/1, or ids that
            are not in the data (how many, and one of them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} not found")
    table = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in ("id", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing} (columns: {list(table.columns)}); it needs id "
                         f"and label")
    bad = ~table["label"].isin([0, 1])
    if bad.any():
        raise ValueError(f"{path} has {int(bad.sum())} label(s) other than 0 or 1, e.g. "
                         f"{table['label'][bad].iloc[0]!r} for {table['id'][bad].iloc[0]}")
    labels = store.labels.copy()
    index = store.index_of(table["id"])  # raises, naming the unknown ids
    labels[index] = table["label"].to_numpy(np.int8)
    return labels, int((labels != store.labels).sum())


def _read_ids(path: Path) -> pd.Series:
    """The `id` column of a CSV."""
    if not path.is_file():
        raise FileNotFoundError(f"id list {path} not found")
    table = pd.read_csv(path, dtype=str)
    if "id" not in table.columns:
        raise ValueError(f"{path} has no `id` column (columns: {list(table.columns)})")
    return table["id"]


def _listed_ids(store: PatchStore, path: Path) -> np.ndarray:
    """Store indices of the labelled patches a CSV with an `id` column names."""
    val = store.index_of(_read_ids(path))
    unlabelled = int((store.labels[val] < 0).sum())
    if unlabelled:
        raise ValueError(f"{path} names {unlabelled} unlabelled patch(es) (e.g. test ids); validation needs "
                         f"labelled ones")
    return val


def holdout_indices(run_dirs: list[str | Path], store: PatchStore) -> np.ndarray:
    """Store indices that none of the given runs trained on: the intersection of their val_ids.csv.

    Args:
        run_dirs: run folders, or checkpoint files inside them.
        store: the dataset the runs trained on.

    Raises:
        ValueError: a run trained on other data (or does not say), or the runs' held-out patches do not
            overlap.
    """
    held = None
    root = Path(store.root).resolve()
    for given in run_dirs:
        run_dir = runs.run_folder_of(given)
        if not (run_dir / "config.json").is_file():
            raise ValueError(f"{given} is not in a run folder written by `train` (no config.json beside it), "
                             "so the patches it held out are unknown; choose a split instead")
        data = TrainConfig.load(run_dir / "config.json").data
        if not data or Path(data).expanduser().resolve() != root:
            raise ValueError(f"run {run_dir.name} was trained on {data or 'unrecorded data'}, not {root}, so "
                             "its held-out patches are unknown here; choose a split instead")
        val = np.sort(store.index_of(runs.val_ids(run_dir)))
        held = val if held is None else np.intersect1d(held, val)
    if held is None:
        raise ValueError("no run given")
    if not len(held):
        raise ValueError("the runs' validation splits share no patch; evaluate them one at a time")
    return held
