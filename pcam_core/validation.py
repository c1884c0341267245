"""Which patches a run validates on, and how well a model or a run's checkpoints score on them.

The split is stratified (or the data's own valid split, or a CSV of ids); a run saves its validation
ids as val_ids.csv, so its held-out AUC can be recomputed later, with TTA or as an ensemble of runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn

from pcam_core.config import TrainConfig
from pcam_core.data import PatchStore, open_dataset
from pcam_core.infer import predict


def split_train_val(store: PatchStore, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Store indices (train, validation): a CSV of ids, else the data's valid split, else stratified val_frac.

    Raises:
        ValueError: no labels, a single class, or a validation split too small to measure AUC.
    """
    if not store.has_labels("train") and not (store.labels[store.splits == "train"] >= 0).any():
        raise ValueError(f"{store.root} has no training labels: training needs train_labels.csv (Kaggle), "
                         f"the *_y.h5 files (PCam) or a labels CSV (image folder)")
    train = store.split_indices("train")
    train = train[store.labels[train] >= 0]
    if cfg.val_ids:
        path = Path(cfg.val_ids)
        if not path.is_file():
            raise FileNotFoundError(f"validation id list {path} not found")
        table = pd.read_csv(path, dtype=str)
        if "id" not in table.columns:
            raise ValueError(f"{path} has no `id` column (columns: {list(table.columns)})")
        val = store.index_of(table["id"])
        train = np.setdiff1d(train, val)
    elif "valid" in store.split_names() and store.has_labels("valid"):
        val = store.split_indices("valid")
    else:
        labels = store.labels[train]
        smallest = np.bincount(labels, minlength=2).min()
        if smallest and round(smallest * cfg.val_frac) < 1:
            raise ValueError(f"too little data to validate: the rarer class has {smallest} patches, so "
                             f"val_frac={cfg.val_frac} holds out none of it; raise --val-frac or add data")
        if smallest:
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


def evaluate(model: nn.Module, store: PatchStore, indices: np.ndarray, normalization: dict, crop: int = 96,
             device: str | torch.device = "cpu", tta: int = 1, precision: str = "auto") -> dict:
    """Validation loss and AUC of `model` on `indices`, with optional dihedral TTA (1, 2, 4 or 8 views).

    Returns:
        dict with val_loss, val_auc (NaN with a single class) and prob (N,) float32.
    """
    ckpt = {"normalization": normalization, "config": {"crop": crop}}
    prob = predict((model, ckpt), store, indices, tta=tta, device=device, precision=precision)["prob"]
    return {**scores(store.labels[indices], prob), "prob": prob}


def evaluate_holdout(run_dirs: list[str | Path], tta: int = 8, checkpoint: str = "last.pt",
                     device: str = "auto") -> dict:
    """AUC on the patches the run(s) validated on (their val_ids.csv), averaging the runs' probabilities.

    With several runs (a small ensemble) they must share the data and validation ids.

    Returns:
        dict with val_auc, val_loss and n.
    """
    run_dirs = [Path(r) for r in run_dirs]
    ids = [pd.read_csv(r / "val_ids.csv", dtype=str)["id"].tolist() for r in run_dirs]
    if any(i != ids[0] for i in ids):
        raise ValueError("the runs validated on different patches; an ensemble needs one split")
    cfg = TrainConfig.load(run_dirs[0] / "config.json")
    store = open_dataset(cfg.data)
    indices = store.index_of(ids[0])
    prob = predict([r / checkpoint for r in run_dirs], store, indices, tta=tta, device=device)["prob"]
    return {**scores(store.labels[indices], prob), "n": len(indices)}


def scores(labels: np.ndarray, prob: np.ndarray) -> dict:
    """val_loss (binary cross-entropy) and val_auc (NaN with one class) of probabilities `prob`."""
    labels = labels.astype(np.float32)
    loss = F.binary_cross_entropy(torch.from_numpy(prob).clamp(1e-6, 1 - 1e-6), torch.from_numpy(labels))
    auc = roc_auc_score(labels, prob) if len(np.unique(labels)) == 2 else float("nan")
    return {"val_loss": float(loss), "val_auc": float(auc)}
