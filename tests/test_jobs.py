"""Background training jobs: flags from a config, a real tiny job through start/stop/resume, dead jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcam_core import runs
from pcam_core.data.readers import pack
from pcam_core.runs import jobs
from pcam_core.runs.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def wait_for(run: Path, states: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = runs.status(run)
        if status["state"] in states and (status["state"] == "running" or not status["alive"]):
            return status
        time.sleep(0.5)
    raise AssertionError(f"{run.name} did not reach {states}: {runs.status(run)}\n{jobs.log_tail(run)}")


def test_config_flags_give_only_what_differs_from_the_defaults():
    config = TrainConfig(data="/d", model="base_cnn", epochs=2, augment=False, pretrained=True, lr=1e-3)
    flags = jobs.config_flags(config)
    assert flags[:4] == ["--data", "/d", "--model", "base_cnn"]
    assert set(flags[4:]) == {"--pretrained", "--epochs", "2", "--lr", "0.001", "--no-augment"}


def test_start_refuses_an_unresolved_device(tmp_path):
    with pytest.raises(ValueError, match="device cpu or cuda"):
        jobs.start(TrainConfig(data=str(tmp_path), model="base_cnn", device="auto"))


@pytest.mark.slow
def test_a_real_job_runs_stops_resumes_and_finishes(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PCAM_RUNS_DIR", str(tmp_path / "runs"))
    pack(demo_dir)  # as the app has always opened (packed) a dataset before it starts a job on it
    config = TrainConfig(data=str(demo_dir), model="base_cnn", epochs=2, batch_size=32, device="cpu")
    run = jobs.start(config)
    assert run.parent == tmp_path / "runs"

    with pytest.raises(ValueError, match="already running on cpu"):
        jobs.start(config)
    assert jobs.active_job(tmp_path / "runs", "cpu") == run

    status = wait_for(run, ("running",))
    assert status["alive"] and status["device"] == "cpu"
    while not (runs.status(run).get("step") or 0) > 0:
        time.sleep(0.2)
    assert jobs.stop(run)
    status = wait_for(run, ("stopped", "finished"))
    assert status["state"] == "stopped", status
    assert (run / "last.pt").is_file()
    assert not jobs.stop(run)

    jobs.resume(run, "cpu")
    status = wait_for(run, ("finished", "failed"))
    assert status["state"] == "finished", jobs.log_tail(run)
    assert list(runs.metrics(run)["epoch"]) == [1, 2]
    assert runs.checkpoint_path(run) == run / "best.pt"

    table = runs.list_runs(tmp_path / "runs")
    assert list(table["run_id"]) == [run.name]
    assert table["state"].iloc[0] == "finished" and table["model"].iloc[0] == "base_cnn"
    assert 0.5 <= table["best_auc"].iloc[0] <= 1.0
    assert jobs.active_job(tmp_path / "runs", "cpu") is None


def test_a_running_job_whose_process_died_reads_as_failed(tmp_path):
    run = tmp_path / "runs" / "dead"
    run.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / "job.json").write_text(json.dumps({"pid": gone.pid, "device": "cpu", "started": time.time()}))
    time.sleep(0.05)  # status.json is newer than the launch: not stale
    (run / "status.json").write_text(json.dumps({"state": "running", "epoch": 0, "epochs": 3}))
    (run / "job.log").write_text("Killed\n")
    status = runs.status(run)
    assert status["state"] == "failed" and not status["alive"]
    assert "without a final status" in status["message"]
    assert jobs.log_tail(run) == "Killed"
    assert jobs.active_job(tmp_path / "runs", "cpu") is None
    assert runs.list_runs(tmp_path / "runs")["state"].tolist() == ["failed"]


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no last.pt"):
        jobs.resume(tmp_path, "cpu")


def test_a_run_started_from_the_command_line_is_read_from_its_status(tmp_path):
    run = tmp_path / "runs" / "cli-run"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 17, "epoch": 1}))
    status = runs.status(run)
    assert status["state"] == "failed" and status["pid"] == 2**22 + 17 and status["device"] is None
    (run / "status.json").write_text(json.dumps({"state": "finished", "epoch": 3, "best_auc": 0.91}))
    assert runs.list_runs(tmp_path / "runs")[["state", "best_auc"]].values.tolist() == [["finished", 0.91]]


@pytest.mark.parametrize("status, share, text", [
    ({"state": "running"}, 0.0, "starting: loading the data and the model"),
    ({"epochs": 2, "steps_per_epoch": 35, "step": 0, "epoch": 0}, 0.0, "epoch 1 of 2, step 0 of 35"),
    ({"epochs": 2, "steps_per_epoch": 35, "step": 12, "epoch": 0}, 12 / 70, "epoch 1 of 2, step 12 of 35"),
    ({"epochs": 2, "steps_per_epoch": 35, "step": 35, "epoch": 0}, 0.5, "epoch 1 of 2: validating"),
    ({"epochs": 2, "steps_per_epoch": 35, "step": 35, "epoch": 1}, 0.5, "epoch 1 of 2, step 35 of 35"),
    ({"epochs": 2, "steps_per_epoch": 35, "step": 56, "epoch": 1}, 0.8, "epoch 2 of 2, step 21 of 35"),
    ({"epochs": 2, "steps_per_epoch": 35, "step": 70, "epoch": 1}, 1.0, "epoch 2 of 2: validating"),
])
def test_progress_counts_steps_within_the_epoch(status, share, text):
    # the Train page once said "epoch 2 of 2, step 56 of 35" with the bar full as epoch 2 began
    assert runs.progress(status) == (pytest.approx(share), text)


def test_timing_says_elapsed_and_what_is_left():
    status = {"started": 1000.0, "epochs": 2, "steps_per_epoch": 50, "step": 25, "epoch": 0}
    assert runs.timing(status, now=1060.0) == "1 min 0 s elapsed, about 3 min 0 s left"  # a quarter done
    assert runs.timing({"started": 1000.0}, now=1005.0) == "5 s elapsed"
    assert runs.timing({}) == ""


def test_runs_are_renamed_and_deleted_but_never_while_running(tmp_path):
    runs_dir = tmp_path / "runs"
    run = runs_dir / "old-name"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "finished", "epoch": 1}))
    (run / "steps.csv").write_text("1,0.69\n2,0.5\n")
    assert runs.steps(run)["loss"].tolist() == [0.69, 0.5]
    with pytest.raises(ValueError, match="not a folder name"):
        runs.rename_run(run, "../elsewhere")
    renamed = runs.rename_run(run, "baseline-cnn")
    assert renamed == runs_dir / "baseline-cnn" and not run.exists()
    with pytest.raises(ValueError, match="already exists"):
        (runs_dir / "other").mkdir()
        runs.rename_run(renamed, "other")

    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pcam_core"])
    try:
        job = {"pid": busy.pid, "device": "cpu", "started": time.time()}
        (renamed / "job.json").write_text(json.dumps(job))
        with pytest.raises(ValueError, match="running"):
            runs.delete_run(renamed)
        with pytest.raises(ValueError, match="running"):
            runs.rename_run(renamed, "x")
    finally:
        busy.kill()
        busy.wait()
    runs.delete_run(renamed)
    assert not renamed.exists()
    with pytest.raises(ValueError, match="not a run folder"):
        runs.delete_run(runs_dir / "other")  # a folder without run files is left alone
    assert (runs_dir / "other").is_dir()


def test_make_run_starts_one_first_model_only_when_there_is_no_run(demo_dir, tmp_path):
    env = {**os.environ, "PCAM_RUNS_DIR": str(tmp_path / "runs")}
    script = [sys.executable, str(REPO / "scripts" / "first_model.py"), str(demo_dir)]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "training a first demo model" in first.stdout, first.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    try:
        assert json.loads((run / "config.json").read_text())["model"] == "base_cnn"
        again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout == ""
        assert len(list(run.parent.glob("*/config.json"))) == 1
    finally:
        jobs.stop(run)
        wait = time.monotonic() + 60
        while runs.status(run)["alive"] and time.monotonic() < wait:
            time.sleep(0.3)
