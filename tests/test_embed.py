"""Per-patch embeddings and the 2-D map (issue 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from pcam_core.data.demo import make_demo
from pcam_core.data.readers import open_dataset
from pcam_core.geometry import dihedral
from pcam_core.inference import embed
from pcam_core.models.registry import Classifier, load

pytest_plugins = ["apptest"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(demo_dir):
    return open_dataset(demo_dir)


def test_embeddings_are_deterministic_and_do_not_depend_on_the_batch_size(store, trained_runs):
    model = load(trained_runs / "tiny")
    idx = np.arange(100)
    runs = [embed.model_features(model, store, idx, device="cpu", batch_size=b, precision="fp32")
            for b in (7, 32, 100, 32)]
    features, prob = runs[0]
    assert features.shape == (100, 128) and np.isfinite(features).all()  # base_cnn's dense layer
    for other, other_prob in runs[1:]:
        np.testing.assert_allclose(other, features, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(other_prob, prob, atol=1e-5)
    bf16, _ = embed.model_features(model, store, idx, device="cpu", batch_size=16, precision="bf16")
    scale = np.abs(features).max()
    assert np.abs(bf16 - features).max() <= 0.05 * scale
    # the probabilities from the embedding pass are the predictions
    from pcam_core.inference import infer

    np.testing.assert_allclose(prob, infer.predict([model], store, idx, precision="fp32")["prob"], atol=1e-5)


def test_the_map_of_a_trained_model_separates_tumour_from_normal(store, trained_runs):
    table = embed.map_table(store, "train", trained_runs / "tiny")
    assert len(table) == len((store.splits == "train").nonzero()[0])
    assert "base_cnn" in table.attrs["source"] and "crop 96" in table.attrs["source"]
    xy, labels = table[["x", "y"]].to_numpy(), table["label"].to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    p = cross_val_predict(KNeighborsClassifier(15), xy, labels, cv=folds, method="predict_proba")[:, 1]
    assert roc_auc_score(labels, p) >= 0.9
    # reopened: from the cache, the same map
    again = embed.cached_map(store, "train", trained_runs / "tiny")
    assert again is not None
    np.testing.assert_array_equal(again[["x", "y"]].to_numpy(), xy)


def test_the_map_is_seeded_and_places_the_rest_near_their_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 60))
    x = np.concatenate([c + rng.normal(0, 1, (200, 60)) for c in centres]).astype(np.float32)
    a, b = embed.map_2d(x, seed=3), embed.map_2d(x, seed=3)
    np.testing.assert_array_equal(a, b)
    # fitted on 150 of the 600 rows: every cluster still lands in one place, apart from the others
    sub = embed.map_2d(x, seed=3, fit_max=150)
    cluster = np.repeat(np.arange(3), 200)
    p = cross_val_predict(KNeighborsClassifier(5), sub, cluster, cv=5)
    assert (p == cluster).mean() > 0.97


def test_the_model_free_map_needs_no_checkpoint_and_ignores_orientation(store):
    idx = np.arange(20)
    features = embed.stats_features(store, idx)
    assert features.shape == (20, len(embed.STATS_FEATURES)) and np.isfinite(features).all()

    class Turned:
        def batch(self, indices):
            return np.ascontiguousarray(dihedral(store.batch(indices), 5))

    np.testing.assert_allclose(embed.stats_features(Turned(), idx), features, rtol=1e-4, atol=1e-3)
    table = embed.map_table(store, "test")
    assert table.attrs["source"] == "colour and texture statistics" and table["prob"].isna().all()
    assert np.isfinite(table[["x", "y"]].to_numpy()).all()


def test_a_split_of_one_patch_and_tiny_splits_still_map(tmp_path):
    make_demo(tmp_path / "d", n_train=30, n_test=1, seed=4)
    one = open_dataset(tmp_path / "d")
    table = embed.map_table(one, "test")
    assert len(table) == 1 and np.isfinite(table[["x", "y"]].to_numpy()).all()
    for n in (2, 3, 5, 17):
        xy = embed.map_2d(np.random.default_rng(n).normal(size=(n, 8)))
        assert xy.shape == (n, 2) and np.isfinite(xy).all()


def test_a_model_without_a_linear_classifier_is_named(store):
    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3)

        def get_classifier(self):
            return nn.Identity()

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    model = Classifier(NoHead(), "nohead", {}, {"mean": [0.0] * 3, "std": [1.0] * 3})
    with pytest.raises(ValueError, match="no linear classifier on pooled features"):
        embed.model_features(model, store, np.arange(4), device="cpu")


@pytest.mark.slow
def test_the_embed_command_writes_the_map_and_names_bad_input(demo_dir, trained_runs, tmp_path):
    out = tmp_path / "map.csv"
    cmd = [sys.executable, "-m", "pcam_core", "embed", "--data", str(demo_dir), "--split", "test"]
    done = subprocess.run(cmd + ["--checkpoint", str(trained_runs / "tiny"), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out, dtype={"id": str})
    assert list(table.columns) == ["id", "label", "x", "y", "prob"] and len(table) == 60
    assert table["prob"].between(0, 1).all() and "base_cnn" in done.stdout
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    done = subprocess.run(cmd + ["--checkpoint", str(bad), "--out", str(tmp_path / "m2.csv")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "error:" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "m2.csv").exists()


def test_identical_patches_get_one_place_on_the_map_not_nan():
    rng = np.random.default_rng(0)
    blank = np.full((50, 12), 0.9, np.float32)  # 50 blank patches: every statistic the same
    assert np.isfinite(embed.map_2d(blank)).all()
    five = rng.normal(size=(5, 12)).astype(np.float32)
    copies = np.repeat(five, 30, axis=0)  # 30 copies of each of 5 patches
    xy = embed.map_2d(copies)
    assert np.isfinite(xy).all()
    assert all(len(np.unique(xy[i * 30:(i + 1) * 30], axis=0)) == 1 for i in range(5))
    many = np.vstack([rng.normal(size=(40, 12)), np.zeros((60, 12))]).astype(np.float32)
    assert np.isfinite(embed.map_2d(many)).all()
