"""Calibration: the fastest setting is measured once per machine and model, kept, honoured by training and
prediction, and overridden by explicit options; background jobs run with the thread settings meant for a
shared machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pcam_core import runs
from pcam_core.data.readers import open_dataset, pack
from pcam_core.data.transforms import to_model_input
from pcam_core.inference import infer
from pcam_core.models import calibrate
from pcam_core.models.calibrate import Setting
from pcam_core.models.registry import Classifier
from pcam_core.runs import jobs
from pcam_core.runs.config import TrainConfig
from pcam_core.training.train import fit

SMALL = dict(model="base_cnn", crop=32, batch_size=16, epochs=1, val_frac=0.5, threads=2)


@pytest.fixture
def calibration(tmp_path, monkeypatch) -> Path:
    """A calibration file of this test's own (the dataset caches move with it)."""
    monkeypatch.setenv("PCAM_CACHE_DIR", str(tmp_path / "cache"))
    return calibrate.calibration_file()


def planted(key: str, fastest: Setting, others: list[Setting]) -> None:
    """Writes timings in which `fastest` wins by far, as if calibration had measured them."""
    per_patch = {s.describe(): 1e-3 for s in others} | {fastest.describe(): 1e-4}
    calibrate._save(key, calibrate.Timings(per_patch))


def test_calibration_times_every_candidate_once_and_keeps_the_result(calibration, monkeypatch):
    chosen = calibrate.choose("base_cnn", 32, "infer", torch.device("cpu"))
    table = json.loads(calibration.read_text())
    (key, entry), = table.items()
    assert "base_cnn" in key and "infer" in key and torch.__version__ in key
    assert calibrate.cpu_model()[0] in key
    expected = calibrate.candidates("infer", None)
    assert set(entry["per_patch"]) == {s.describe() for s in expected}  # every candidate timed
    assert all(seconds > 0 for seconds in entry["per_patch"].values())
    fastest = min(expected, key=lambda s: entry["per_patch"][s.describe()])
    assert chosen == fastest

    def no_timing(*args):
        raise AssertionError("timed again although the machine's timings are kept")

    monkeypatch.setattr(calibrate, "_measure", no_timing)
    assert calibrate.choose("base_cnn", 32, "infer", torch.device("cpu")) == chosen


def test_a_short_job_does_not_wait_for_a_first_calibration(calibration):
    chosen = calibrate.choose("base_cnn", 32, "infer", torch.device("cpu"), patches=48)
    assert chosen == Setting("fp32", True, False, 64)
    assert not calibration.exists()


def test_candidates_offer_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    for native in (False, True):
        monkeypatch.setattr(calibrate, "bf16_instructions", lambda native=native: native)
        precisions = {s.precision for s in calibrate.candidates("train", 64)}
        assert precisions == ({"fp32", "bf16"} if native else {"fp32"})
    fixed = calibrate.candidates("train", 64, precision="fp32", channels_last=False)
    assert fixed == [Setting("fp32", False, False, 64)]  # fixed options leave nothing to choose


def test_a_timed_training_run_also_times_its_models_inference(calibration, monkeypatch):
    timed = []

    def fake_measure(key, model, crop, task, options, known):
        timed.append(task)
        return calibrate.Timings({s.describe(): 1e-3 for s in options})

    monkeypatch.setattr(calibrate, "_measure", fake_measure)
    cfg = TrainConfig(data="unused", model="base_cnn", crop=32, batch_size=64, compile=False)
    calibrate.training_setting(cfg, torch.device("cpu"), patches=calibrate.WORTH_TIMING["train"])
    assert timed == ["train", "infer"]  # validation and the app's pages then run the measured setting


def test_compiling_pays_only_when_the_run_is_long_enough():
    eager, compiled = Setting("fp32", True, False, 64), Setting("fp32", True, True, 64)
    timings = calibrate.Timings({eager.describe(): 2e-3, compiled.describe(): 1e-3}, compile_seconds=60)
    assert timings.best([eager, compiled], patches=10_000) == eager  # 20 s eager vs 10 + 60 s compiled
    assert timings.best([eager, compiled], patches=1_000_000) == compiled


@pytest.mark.parametrize("native", [False, True])
def test_training_follows_the_calibration_and_explicit_flags_override_it(demo_dir, tmp_path, calibration,
                                                                        monkeypatch, native):
    monkeypatch.setattr(calibrate, "bf16_instructions", lambda: native)
    cfg = TrainConfig(data=str(demo_dir), **SMALL)
    options = calibrate.candidates("train", cfg.batch_size)
    fastest = Setting("bf16" if native else "fp32", False, False, cfg.batch_size)  # NCHW, as measured here
    planted(calibrate.machine_key("base_cnn", 32, "train", cfg.batch_size), fastest, options)
    # a run this short would not time anything itself: the kept timings decide
    start = next(fit(replace(cfg, out=str(tmp_path / "calibrated"))))
    assert start["setting"] == fastest.describe()
    saved = TrainConfig.load(tmp_path / "calibrated" / "config.json")
    assert (saved.precision, saved.channels_last, saved.compile) == (fastest.precision, False, False)

    events = list(fit(replace(cfg, channels_last=True, precision="fp32", out=str(tmp_path / "fixed"))))
    assert events[0]["setting"] == "fp32, channels_last, eager, batch 16"
    assert events[-1]["type"] == "finished"
    saved = TrainConfig.load(tmp_path / "fixed" / "config.json")
    assert (saved.precision, saved.channels_last) == ("fp32", True)


def test_prediction_follows_the_calibration_and_an_explicit_batch_size_overrides_it(demo_dir, calibration,
                                                                                   monkeypatch):
    store = open_dataset(demo_dir)
    torch.manual_seed(0)
    model = Classifier.new("base_cnn", 32)
    options = calibrate.candidates("infer", None)
    planted(calibrate.machine_key("base_cnn", 32, "infer"), Setting("fp32", False, False, 32), options)
    seen = []
    original = store.batch
    monkeypatch.setattr(store, "batch", lambda idx: seen.append(len(idx)) or original(idx))
    first = infer.predict([model], store, np.arange(100), precision="auto")["prob"]
    assert seen[:3] == [32, 32, 32]
    conv = next(m for m in model.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)  # the layout timed faster
    seen.clear()
    again = infer.predict([model], store, np.arange(100), precision="auto", batch_size=50)["prob"]
    assert seen == [50, 50]
    np.testing.assert_allclose(again, first, atol=1e-5)  # the layout and batch change speed, not results


@pytest.mark.slow
def test_bf16_and_compiled_predictions_agree_with_fp32(demo_dir):
    store = open_dataset(demo_dir)
    torch.manual_seed(0)
    model = Classifier.new("base_cnn", 48)
    idx = np.arange(64)
    fp32 = infer.predict([model], store, idx, precision="fp32", batch_size=32)["prob"]
    bf16 = infer.predict([model], store, idx, precision="bf16", batch_size=32)["prob"]
    np.testing.assert_allclose(bf16, fp32, atol=2e-2)
    compiled = torch.compile(model.module)
    x = to_model_input(torch.from_numpy(store.batch(idx)), model.normalization, crop=48)
    with torch.inference_mode():
        out = torch.sigmoid(compiled(x).reshape(-1)).numpy()
    np.testing.assert_allclose(out, fp32, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the job's threads from /proc (Linux)")
def test_a_job_started_from_the_app_runs_niced_with_passive_openmp_threads(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PCAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    pack(demo_dir)
    run = jobs.start(TrainConfig(data=str(demo_dir), model="base_cnn", crop=32, epochs=1, device="cpu"))
    pid = json.loads((run / "job.json").read_text())["pid"]
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"OMP_WAIT_POLICY=PASSIVE" in environ
        deadline = time.monotonic() + 120
        while not (runs.status(run).get("step") or 0) and time.monotonic() < deadline:
            time.sleep(0.2)
        # every thread of the trainer, the OpenMP workers it started included, runs at the job's niceness
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        assert len(threads) > 1
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in threads} == {jobs.JOB_NICENESS}
    finally:
        jobs.stop(run)
        deadline = time.monotonic() + 120
        while runs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_commands_reuse_freed_tensor_memory_instead_of_faulting_it_in_again():
    script = """
import resource, sys, torch
from pcam_core.cli.common import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
for _ in range(8):  # a training step's worth: a 72 MB activation made, used and freed (glibc settles in 4)
    torch.ones(64, 32, 94, 94).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(64, 32, 94, 94).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {}
    for mode in ("keep", "default"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], check=True)
        faults[mode] = int(done.stdout.split()[-1])
    assert faults["default"] > 5 * 10_000  # glibc maps each 72 MB block afresh: 17,600 pages a time
    assert faults["keep"] < 1_000
