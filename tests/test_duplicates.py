"""Exact and near-duplicate patches, within training and between training and test (issue 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcam_core.data.demo import duplicated_copy, make_demo
from pcam_core.data.readers import open_dataset
from pcam_core.geometry import dihedral
from pcam_core.inference import duplicates

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """2,000 distinct demo training patches (and 100 test) with 24 copies planted: two under each of the 8
    flips and turns, eight re-compressed as JPEG at quality 90; half of the copies in test/."""
    root = tmp_path_factory.mktemp("dups")
    make_demo(root / "clean", n_train=2000, n_test=100, seed=7)
    pairs = duplicated_copy(root / "clean", root / "data", per_transform=2, jpeg=8, seed=0)
    return root, pairs


@pytest.mark.slow
def test_every_planted_copy_is_found_and_nothing_else(planted):
    root, pairs = planted
    store = open_dataset(root / "data")
    found = duplicates.find_duplicates(store)
    key = {frozenset((a, b)): kind for a, b, kind in zip(found["a_id"], found["b_id"], found["kind"],
                                                          strict=True)}
    expected = {frozenset((s, c)): kind for s, c, kind in zip(pairs["source"], pairs["copy"], pairs["kind"],
                                                               strict=True)}
    assert key == expected  # all 24 found, each with its kind, and no pair among the 2,100 distinct patches
    exact = found[found["kind"] == "exact"]
    assert sorted(pairs.loc[pairs["kind"] == "exact", "transform"].unique()) == list(range(8))
    for row in exact.itertuples():  # the stored transform takes a's pixels onto b's
        a, b = store.batch([row.a, row.b])
        assert np.array_equal(dihedral(a, row.transform), b)
    near = found[found["kind"] == "near"]
    assert (near["psnr"] >= duplicates.NEAR_PSNR).all() and np.isinf(exact["psnr"]).all()
    counts = duplicates.summary(found).set_index("splits")
    assert counts.loc["train - train", "exact"] + counts.loc["test - train", "exact"] == 16
    assert counts.loc["test - train", "exact"] == 8 and counts.loc["test - train", "near"] == 4


def test_a_clean_dataset_has_no_duplicates(planted):
    root, _ = planted
    assert duplicates.find_duplicates(open_dataset(root / "clean")).empty


def test_identical_copies_form_one_group_and_leaks_name_the_held_out_side():
    a, b, c, d = (np.full((96, 96, 3), v, np.uint8) for v in (10, 10, 10, 50))
    patches = np.stack([a, b, c, d])
    patches[:3, 0, 0] = 200  # the same marked patch three times, turned once

    patches[1] = dihedral(patches[0], 3)

    class Store:
        ids = np.array(["p0", "p1", "p2", "p3"])
        splits = np.array(["train", "train", "test", "train"])

        def batch(self, indices):
            return patches[np.asarray(indices)]

    rows = duplicates.exact_pairs(Store(), np.arange(4), duplicates._invariants(patches))
    assert sorted((i, j, k) for i, j, k in rows) == [(0, 1, 3), (0, 2, 0)]  # the first copy with each other
    pairs = pd.DataFrame({"a_id": ["p0", "p0", "p1"], "b_id": ["p1", "p2", "p2"]})
    leaked = duplicates.leaks(pairs, held_out_ids=["p2"], training_ids=["p0", "p1", "p3"])
    assert len(leaked) == 2


class ArrayStore:
    """Just what find_duplicates reads of a PatchStore, over patches in memory."""

    def __init__(self, patches: np.ndarray, blank: np.ndarray):
        self.patches = patches
        self.ids = np.array([f"p{i}" for i in range(len(patches))])
        self.splits = np.array(["train"] * len(patches))
        self.stats = pd.DataFrame({"blank": blank})

    def __len__(self):
        return len(self.patches)

    def batch(self, indices):
        return self.patches[np.asarray(indices)]


def test_blank_copies_are_exact_pairs_and_exact_copies_are_not_near_pairs_again():
    rng = np.random.default_rng(3)
    pale = np.clip(rng.normal(240, 3, (96, 96, 3)), 0, 255).astype(np.uint8)  # near-blank glass (mean ~240)
    tissue = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    others = rng.integers(0, 255, (5, 96, 96, 3), dtype=np.uint8)
    patches = np.concatenate([pale[None], dihedral(pale, 5)[None], np.repeat(tissue[None], 40, 0), others])
    blank = np.zeros(len(patches), bool)
    blank[0] = True  # the blank rule called the flipped copy tissue: it must not matter for an exact copy
    table = duplicates.find_duplicates(ArrayStore(patches, blank))
    exact = table[table["kind"] == "exact"]
    assert ("p0", "p1", 5) in set(zip(exact["a_id"], exact["b_id"], exact["transform"], strict=True))
    assert len(exact) == 1 + 39  # the pale pair; the 40 copies as the first with each other
    assert (table["kind"] == "near").sum() == 0  # no copy reported again as near


@pytest.mark.slow
def test_the_duplicates_command_writes_pairs_and_counts(planted, tmp_path):
    root, _ = planted
    out = tmp_path / "pairs.csv"
    cmd = [sys.executable, "-m", "pcam_core", "duplicates", "--data", str(root / "data")]
    done = subprocess.run(cmd + ["--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out)
    assert len(table) == 24 and set(table["kind"]) == {"exact", "near"}
    assert "test - train: 8 exact, 4 near" in done.stdout
    done = subprocess.run(cmd + ["--out", str(tmp_path / "x.csv"), "--min-psnr", "-3"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.startswith("error:") and done.stderr.count("\n") == 1
