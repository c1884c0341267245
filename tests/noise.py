"""Test tooling: a copy of a labelled dataset with a share of its training labels flipped, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def noisy_copy(data: Path, out: Path, share: float = 0.05, seed: int = 0) -> set[str]:
    """Links `data`'s image folders and masks into `out` and writes its train_labels.csv with `share` of
    the labels flipped (0 <-> 1), chosen at random with `seed`. Returns the flipped ids."""
    out.mkdir(parents=True)
    for name in ("train", "test", "tumour_masks.npz", "sample_submission.csv"):
        if (data / name).exists():
            (out / name).symlink_to((data / name).resolve())
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    labels.loc[flip, "label"] = 1 - labels.loc[flip, "label"]
    labels.to_csv(out / "train_labels.csv", index=False)
    return set(labels["id"].iloc[flip])
