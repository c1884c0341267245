"""Batched prediction: batch-size invariance, TTA, ensembles, the predictions cache, bad checkpoints."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from pcam_core.data.readers import open_dataset
from pcam_core.inference import infer
from pcam_core.models.registry import Classifier, load

HALF = {"mean": [0.5] * 3, "std": [0.5] * 3}


def untrained_checkpoint(path, name: str = "base_cnn", crop: int = 96, seed: int = 0):
    """A checkpoint file of a freshly initialised registered model (what `train` writes, minus training)."""
    torch.manual_seed(seed)
    return Classifier.new(name, crop).save(path)


class PointwiseNet(nn.Module):
    """Rotation- and flip-invariant by construction: per-pixel features, then a global mean."""

    def __init__(self):
        super().__init__()
        self.pixels = nn.Sequential(nn.Conv2d(3, 16, 1), nn.Tanh(), nn.Conv2d(16, 8, 1), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.pixels(x).mean(dim=(2, 3)))  # (B, 1)


@pytest.fixture(scope="module")
def store(demo_dir):
    return open_dataset(demo_dir)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "base_cnn.pt")


@pytest.fixture(scope="module")
def model(ckpt):
    return load(ckpt)


def test_predictions_do_not_depend_on_batch_size(store, model):
    idx = np.arange(50)
    runs = [infer.predict([model], store, idx, batch_size=b, precision="fp32")["prob"] for b in (50, 16, 1)]
    assert runs[0].shape == (50,) and runs[0].dtype == np.float32
    assert np.ptp(runs[0]) > 0  # the patches do give different outputs
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-5)
    bf16 = infer.predict([model], store, idx, batch_size=16, precision="bf16")["prob"]
    np.testing.assert_allclose(bf16, runs[0], atol=2e-2)


def test_tta_on_an_invariant_model_changes_nothing(store):
    torch.manual_seed(0)
    pointwise = [Classifier(PointwiseNet().eval(), "pointwise", {}, HALF)]
    idx = np.arange(20)
    one = infer.predict(pointwise, store, idx, tta=1, precision="fp32")
    eight = infer.predict(pointwise, store, idx, tta=8, precision="fp32")
    assert eight["views"].shape == (20, 8)
    np.testing.assert_allclose(eight["prob"], one["prob"], atol=1e-6)
    assert eight["spread"].max() < 1e-6 and np.ptp(one["prob"]) > 0


def test_tta_views_of_an_oriented_model_differ(store, model):
    out = infer.predict([model], store, np.arange(10), tta=4, precision="fp32")
    assert out["views"].shape == (10, 4) and out["spread"].max() > 0
    np.testing.assert_allclose(out["prob"], out["views"].mean(axis=1), rtol=1e-6)


def test_ensemble_averages_probabilities(store, model, tmp_path):
    other = load(untrained_checkpoint(tmp_path / "other.pt", seed=1))
    idx = np.arange(12)
    a, b = (infer.predict([c], store, idx, precision="fp32")["prob"] for c in (model, other))
    both = infer.predict([model, other], store, idx, precision="fp32")["prob"]
    np.testing.assert_allclose(both, (a + b) / 2, atol=1e-6)


def test_predict_images_equals_predict_on_the_same_pixels(store, model):
    idx = np.arange(6)
    from_store = infer.predict([model], store, idx, tta=8, precision="fp32")
    in_memory = infer.predict_images(model, store.batch(idx), tta=8, device="cpu")
    np.testing.assert_allclose(in_memory["views"], from_store["views"], atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        infer.predict_images(model, np.zeros((1, 64, 64, 3), np.uint8))


def test_progress_reaches_the_total(store, model):
    calls = []
    infer.predict([model], store, np.arange(30), batch_size=8, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(8, 30), (16, 30), (24, 30), (30, 30)]


def cached_files(store):
    return sorted((store.cache_dir / "predictions").glob("test-*.parquet"))


def test_predictions_table_is_cached_per_checkpoint_and_data(tmp_path, demo_dir, monkeypatch):
    monkeypatch.setenv("PCAM_CACHE_DIR", str(tmp_path / "cache"))  # this test's own cache
    store = open_dataset(demo_dir)
    ckpt = untrained_checkpoint(tmp_path / "a.pt")
    table = infer.predictions_table([ckpt], store, "test", tta=2)
    assert list(table.columns) == ["id", "index", "prob", "spread", "label"]
    assert len(table) == 60 and (table["label"] == -1).all()
    assert table["id"].tolist() == store.ids[store.split_indices("test")].tolist()
    [cached] = cached_files(store)
    # the second request reads that file: mark it, and the mark comes back
    table.assign(prob=0.25).to_parquet(cached, index=False)
    assert (infer.predictions_table([ckpt], store, "test", tta=2)["prob"] == 0.25).all()
    # a rewritten checkpoint (new mtime) is predicted afresh into a new file
    os.replace(untrained_checkpoint(tmp_path / "b.pt", seed=3), ckpt)
    fresh = infer.predictions_table([ckpt], store, "test", tta=2)
    assert not np.allclose(fresh["prob"], table["prob"]) and len(cached_files(store)) == 2


def test_predictions_table_hands_over_the_rows_done_so_far(tmp_path, demo_dir, monkeypatch):
    monkeypatch.setenv("PCAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(infer.time, "monotonic", iter(range(0, 10**6, 5)).__next__)  # every batch is late
    store = open_dataset(demo_dir)
    seen = []
    table = infer.predictions_table([untrained_checkpoint(tmp_path / "a.pt")], store, "train", tta=2,
                                    batch_size=128, partial=seen.append)
    assert [len(part) for part in seen] == [128, 256, 384, 512, 600]  # the split's 600, batch by batch
    for part in seen:  # each part is final: the same rows and numbers as the whole table's first ones
        np.testing.assert_array_equal(part["index"], table["index"][:len(part)])
        np.testing.assert_allclose(part["prob"], table["prob"][:len(part)])
        np.testing.assert_allclose(part["spread"], table["spread"][:len(part)])


def test_predictions_table_keeps_precisions_apart(tmp_path, demo_dir, monkeypatch):
    monkeypatch.setenv("PCAM_CACHE_DIR", str(tmp_path / "cache"))
    store = open_dataset(demo_dir)
    ckpt = untrained_checkpoint(tmp_path / "p.pt")
    tables = [infer.predictions_table([ckpt], store, "test", precision=p) for p in ("fp32", "bf16", "fp32")]
    assert len(cached_files(store)) == 2
    np.testing.assert_array_equal(tables[0]["prob"], tables[2]["prob"])
    assert not np.array_equal(tables[0]["prob"], tables[1]["prob"])  # bf16 rounds differently
    np.testing.assert_allclose(tables[0]["prob"], tables[1]["prob"], atol=2e-2)


def test_bad_tta(store, model):
    with pytest.raises(ValueError, match="tta must be one of"):
        infer.predict([model], store, [0], tta=3)
    with pytest.raises(ValueError, match="list of Classifiers"):
        infer.predict(model, store, [0])


def test_corrupt_checkpoint(store, ckpt, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable PCam Review checkpoint"):
        infer.predictions_table([broken], store, "test")


def test_checkpoint_for_another_model(store, tmp_path):
    path = untrained_checkpoint(tmp_path / "x.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_name"] = "efficientnet_lite0"
    ckpt["model_args"] = {}
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="do not fit model efficientnet_lite0"):
        infer.predictions_table([path], store, "test")


# the command line: predict, evaluate and submit, and the one-line errors they give on bad input

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from pcam_core.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_predict_evaluate_submit(demo_dir, ckpt, tmp_path, capsys):
    import json

    import pandas as pd

    common = ["--checkpoint", ckpt, "--data", demo_dir]
    code, out, _ = run_cli(capsys, "predict", *common, "--out", tmp_path / "p.csv")
    assert code == 0 and "wrote 60 test predictions" in out
    preds = pd.read_csv(tmp_path / "p.csv")
    assert list(preds.columns) == ["id", "prob"] and len(preds) == 60

    code, out, _ = run_cli(capsys, "evaluate", "--checkpoint", ckpt, ckpt, "--data", demo_dir, "--tta", 2,
                           "--out", tmp_path / "m.json")
    assert code == 0 and "ROC AUC" in out and "train: 600 patches" in out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["split"] == "train" and report["tta"] == 2 and len(report["checkpoints"]) == 2
    assert {"summary", "roc", "pr", "calibration"} <= set(report) and len(report["calibration"]["lo"]) == 10

    code, out, _ = run_cli(capsys, "submit", *common, "--out", tmp_path / "s.csv")
    assert code == 0 and "wrote 60 test probabilities" in out
    sub = pd.read_csv(tmp_path / "s.csv")
    sample = pd.read_csv(demo_dir / "sample_submission.csv")
    assert sub["id"].tolist() == sample["id"].tolist()


def test_cli_bad_input_gives_one_line(demo_dir, ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    train_only = tmp_path / "train_only"
    (train_only / "train").mkdir(parents=True)
    patch = next((demo_dir / "test").glob("*.tif")).read_bytes()
    for pid in ("a", "b"):
        (train_only / "train" / f"{pid}.tif").write_bytes(patch)
    (train_only / "train_labels.csv").write_text("id,label\na,0\nb,1\n")
    cases = [
        (["evaluate", "--checkpoint", ckpt, "--data", demo_dir, "--split", "test"], "are not all labelled"),
        (["predict", "--checkpoint", ckpt, "--data", demo_dir, "--out", blocker / "p.csv"], "cannot create"),
        (["predict", "--checkpoint", broken, "--data", demo_dir, "--out", tmp_path / "p.csv"],
         "not a readable PCam Review checkpoint"),
        (["predict", "--checkpoint", tmp_path / "absent.pt", "--data", demo_dir, "--out", tmp_path / "p.csv"],
         "not found"),
        (["submit", "--checkpoint", ckpt, "--data", train_only, "--out", tmp_path / "s.csv"], "no test part"),
        (["predict", "--checkpoint", ckpt, "--data", demo_dir, "--batch-size", "0",
          "--out", tmp_path / "p.csv"], "batch size must be a positive number"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        lines = [line for line in err.splitlines() if line.startswith("error")]  # progress bars aside
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)


@pytest.mark.slow
def test_torchrun_predict_shards_and_rank_0_writes_the_same_table(demo_dir, ckpt, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pcam_core", "predict", "--checkpoint", str(ckpt), "--data", str(demo_dir),
           "--split", "train", "--precision", "fp32", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "PCAM_CACHE_DIR": str(tmp_path / "cache")}  # a cold cache: rank 0 packs while rank 1 waits
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote 600 train predictions") == 1  # rank 0 alone writes
    store = open_dataset(demo_dir)
    alone = infer.predict([load(ckpt)], store, store.split_indices("train"), precision="fp32")["prob"]
    table = pd.read_csv(out)
    assert table["id"].tolist() == store.ids[store.split_indices("train")].tolist()
    np.testing.assert_allclose(table["prob"].to_numpy(), alone, atol=1e-5)

    cmd[cmd.index(str(demo_dir))] = str(tmp_path / "absent")  # bad input: rank 0 says so once, all ranks stop
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(ours) == 1 and "does not exist" in ours[0], result.stderr[-3000:]
    assert "[rank1]" not in result.stderr  # no traceback from the rank that waited for rank 0
