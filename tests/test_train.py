"""Training: a short fit learns, a stopped+resumed run matches an uninterrupted one, torchrun, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from pcam_core.data.readers import open_dataset
from pcam_core.inference import metrics
from pcam_core.inference.infer import predictions_table
from pcam_core.models.registry import create_model, load, read_checkpoint
from pcam_core.runs.config import TrainConfig
from pcam_core.training.schedule import lr_factor
from pcam_core.training.train import fit

REPO = Path(__file__).resolve().parents[1]
# small and fast: the notebook's CNN on the centre 48 px, 15 steps of 24 per epoch
SMALL = dict(model="base_cnn", crop=48, batch_size=24, val_frac=0.4, lr=3e-3, threads=2)


def run_all(cfg: TrainConfig, stop: threading.Event | None = None, stop_after: int | None = None):
    events = []
    for event in fit(cfg, stop):
        events.append(event)
        if stop_after is not None and event["type"] == "step" and event["step"] == stop_after:
            stop.set()
    return events


@pytest.mark.slow
def test_two_short_epochs_on_demo_lift_auc_well_above_chance(demo_dir, tmp_path):
    # 30 steps of 24 patches: the demo's margin patches (a few tumour nuclei reaching into the centre)
    # are not learnt in the 15 steps of one such epoch, whose schedule decays almost at once
    cfg = TrainConfig(data=str(demo_dir), out=str(tmp_path / "run"), epochs=2, **{**SMALL, "crop": 96})
    events = run_all(cfg)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished" and kinds.count("epoch") == 2
    auc = max(e["metrics"]["val_auc"] for e in events if e["type"] == "epoch")
    assert auc > 0.8
    run = tmp_path / "run"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == 2 and status["best_auc"] == pytest.approx(auc)
    columns = ["epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds"]
    assert list(pd.read_csv(run / "metrics.csv").columns) == columns
    # the config as run: what "auto" came to (a run this short is not calibrated: fp32, channels_last, eager)
    assert TrainConfig.load(run / "config.json") == replace(cfg, precision="fp32", channels_last=True,
                                                            compile=False)
    classifier = load(run)
    assert classifier.crop == 96 and classifier.normalization["std"] == [1.0] * 3
    holdout = predictions_table([run], open_dataset(demo_dir), "holdout", precision="fp32")  # val_ids.csv
    assert len(holdout) == events[0]["n_val"]
    assert metrics.roc_auc(holdout["label"], holdout["prob"]) == pytest.approx(auc, abs=1e-3)
    files = {"config.json", "status.json", "metrics.csv", "val_ids.csv", "best.pt", "last.pt"}
    assert files <= {p.name for p in run.iterdir()} <= files | {"steps.csv"}  # steps.csv: the loss every 2 s


@pytest.mark.slow
def test_stopped_and_resumed_run_ends_with_the_same_weights(demo_dir, tmp_path):
    cfg = TrainConfig(data=str(demo_dir), epochs=2, ema_decay=0.9, **SMALL)
    run_all(replace(cfg, out=str(tmp_path / "straight")))

    stop = threading.Event()
    events = run_all(replace(cfg, out=str(tmp_path / "stopped")), stop, stop_after=20)  # mid second epoch
    assert events[-1]["type"] == "stopped" and events[-1]["step"] == 20
    assert json.loads((tmp_path / "stopped" / "status.json").read_text())["state"] == "stopped"
    resumed = run_all(TrainConfig(resume=str(tmp_path / "stopped")))
    assert resumed[0]["resumed_at_step"] == 20 and resumed[-1]["type"] == "finished"

    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "stopped" / "last.pt")
    for key in ("state_dict", "train_state_dict"):
        assert all(torch.equal(v, b[key][k]) for k, v in a[key].items()), key
    straight, stopped = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("straight", "stopped"))
    assert len(stopped) == 2  # the epoch cut in two reports the mean loss over all its steps
    assert stopped["train_loss"].tolist() == pytest.approx(straight["train_loss"].tolist(), rel=1e-9)
    assert stopped["val_auc"].tolist() == straight["val_auc"].tolist()
    with pytest.raises(ValueError, match="already finished"):
        run_all(TrainConfig(resume=str(tmp_path / "stopped")))


def test_head_then_full_freezes_the_backbone_first(demo_dir, tmp_path):
    cfg = TrainConfig(data=str(demo_dir), out=str(tmp_path / "run"), epochs=2, finetune="head_then_full",
                      head_epochs=1, **SMALL)
    saved = [read_checkpoint(e["path"])["state_dict"] for e in fit(cfg)
             if e["type"] == "checkpoint" and not e["best"]]  # last.pt after each epoch
    torch.manual_seed(cfg.seed)
    init = create_model("base_cnn", input_size=48).state_dict()
    assert torch.equal(init["features.0.weight"], saved[0]["features.0.weight"])  # frozen in epoch 1
    assert not torch.equal(init["head.1.weight"], saved[0]["head.1.weight"])
    assert not torch.equal(saved[0]["features.0.weight"], saved[1]["features.0.weight"])  # trained in epoch 2


@pytest.mark.slow
def test_cli_sigterm_writes_a_resumable_checkpoint(demo_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pcam_core", "train", "--data", str(demo_dir), "--model", "base_cnn",
           "--crop", "48", "--batch-size", "8", "--epochs", "50", "--out", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {}
        if status.get("step", 0) > 0:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resume with --resume" in out
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert read_checkpoint(run / "last.pt")["step"] > 0


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_checkpoint(demo_dir, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pcam_core", "train", "--data", str(demo_dir), "--model", "base_cnn", "--crop", "48",
           "--batch-size", "16", "--epochs", "1", "--threads", "1", "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]
    ckpt = read_checkpoint(run / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert result.stdout.count("epoch 1: train loss") == 1  # rank 0 alone reports


def test_bad_options_fail_before_training(demo_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'.*base_cnn"):
        run_all(TrainConfig(data=str(demo_dir), model="nope", out=str(tmp_path / "a")))
    assert json.loads((tmp_path / "a" / "status.json").read_text())["state"] == "failed"
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(data="x", schedule="step").validate()
    with pytest.raises(ValueError, match="crop"):
        TrainConfig(data="x", crop=100).validate()
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        run_all(TrainConfig(resume=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="unlabelled"):  # test ids cannot validate
        (tmp_path / "ids.csv").write_text("id\n" + "\n".join(p.stem for p in (demo_dir / "test").iterdir()))
        run_all(TrainConfig(data=str(demo_dir), val_ids=str(tmp_path / "ids.csv"), out=str(tmp_path / "b"),
                            **SMALL))


def test_lr_schedules():
    one = [lr_factor(s, 100, "onecycle", 0.1) for s in range(100)]
    assert one[0] == pytest.approx(0.1) and max(one) == pytest.approx(1) and one[-1] < 0.01
    cos = [lr_factor(s, 100, "cosine", 0.1) for s in range(100)]
    assert cos[0] == 1 and all(a >= b for a, b in zip(cos, cos[1:], strict=False))


def test_a_stop_is_honoured_at_an_epoch_end_even_with_one_step_per_epoch(demo_dir, tmp_path):
    # one step per epoch leaves no step inside an epoch to stop at: the run stops as the epoch ends
    cfg = TrainConfig(data=str(demo_dir), out=str(tmp_path / "run"), epochs=3,
                      **{**SMALL, "batch_size": 400})
    stop = threading.Event()
    stop.set()
    events = run_all(cfg, stop)
    assert events[0]["steps_per_epoch"] == 1
    assert [e["type"] for e in events][-1] == "stopped" and events[-1]["step"] == 1
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "stopped"
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 1  # the finished epoch was validated
    resumed = run_all(TrainConfig(resume=str(tmp_path / "run")))
    assert resumed[-1]["type"] == "finished"
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1, 2, 3]
