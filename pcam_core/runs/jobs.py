"""Background training jobs: launch `python -m pcam_core train` detached, stop it, resume it.

A job is its run folder (`folder.py` reads it). The trainer writes `status.json`, `metrics.csv` and
checkpoints there; this module adds `job.json` (pid, device, command, start time) and `job.log` (the
process's output). So the state of a job is read from disk, not held in memory: it survives a page
reload, a closed tab or a restarted app, and several browser sessions see the same jobs. One job runs
per device; the check and the launch happen under a file lock, so two tabs pressing Start at once
start one job. This module does not import torch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

from pcam_core import runs
from pcam_core.atomic import file_lock, write_text
from pcam_core.runs.config import TrainConfig

log = logging.getLogger(__name__)

PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# Background jobs run niced: when the reviewer's page needs the CPU it gets it at once, and the job has
# the whole machine the rest of the time (nice only orders who runs when both want to).
JOB_NICENESS = 10


def config_flags(config: TrainConfig) -> list[str]:
    """The `train` flags that reproduce `config`: data and model, then each option that differs from
    its default ({"batch_size": 64} -> --batch-size 64; a switch -> --flag or --no-flag)."""
    defaults = TrainConfig()
    flags = ["--data", str(config.data), "--model", config.model]
    for field in fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name in ("data", "model") or value == getattr(defaults, field.name) or value is None:
            continue
        flag = field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            flags += [f"--{flag}", str(value)]
    return flags


def active_job(runs_dir: Path, device: str) -> Path | None:
    """The run folder of the job running on `device` ("cpu" or "cuda"), if any."""
    if not runs_dir.is_dir():
        return None
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        job = _job(run_dir)
        if job.get("device") == device and runs.alive(job.get("pid")):
            return run_dir
    return None


def _launch(runs_dir: Path, run_dir: Path, args: list[str], device: str, new: bool,
            config: str | None = None, files: dict[str, str] | None = None, command: str = "train") -> Path:
    with file_lock(runs_dir / ".launch.lock"):
        busy = active_job(runs_dir, device)
        if busy is not None:
            raise ValueError(f"a training job is already running on {device} ({busy.name}); "
                             "stop it or wait for it to finish")
        if new and run_dir.exists():
            raise ValueError(f"run folder {run_dir} already exists; choose another name")
        run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_text(run_dir / "config.json", config)
        for name, text in (files or {}).items():
            write_text(run_dir / name, text)
        pid = _spawn([command, *args], run_dir, device)
    log.info("started training job %s (pid %d) on %s", run_dir.name, pid, device)
    return run_dir


def job_environment() -> dict[str, str]:
    """The environment a background job runs in: this one, with pcam_core importable and OpenMP threads
    that sleep when they wait (OMP_WAIT_POLICY=PASSIVE) unless the user set a policy.

    A job shares the machine with the app (and with whatever else the user runs). OpenMP threads that
    spin while they wait for a sibling keep a core busy doing nothing, and a sibling whose core another
    process took holds every step up. On a 2-core EPYC a lite0 step went from 1.1 s to 5.8 s while the
    app's Browse page was used; with passive waits and the job niced, to 1.8 s (BENCHMARKS.md, "Sharing
    the machine").
    """
    path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _spawn(args: list[str], folder: Path, device: str) -> int:
    """Starts `python -m pcam_core ARGS` detached at a lower priority (JOB_NICENESS), its output in
    folder/job.log; records folder/job.json."""
    command = [sys.executable, "-m", "pcam_core", *args]
    with open(folder / "job.log", "ab") as out:
        proc = subprocess.Popen(command, cwd=PACKAGE_PARENT, env=job_environment(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if hasattr(os, "setpriority"):  # the app's own pages come first; set before the job has imported torch
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, JOB_NICENESS)
        except OSError as e:  # the job runs all the same, at the app's priority
            log.warning("could not lower the priority of job %d: %s", proc.pid, e)
    # a thread waits on the child so that it is reaped when it ends, not left a zombie of the app
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
    write_text(folder / "job.json", json.dumps({"pid": proc.pid, "device": device, "command": command,
                                                "kind": args[0], "started": time.time()}, indent=2))
    return proc.pid


def start_slide_map(folder: Path, flags: list[str], device: str) -> None:
    """Starts `python -m pcam_core slide FLAGS` in the background for the map kept in `folder`
    (`slide_cache.map_dir` of the same slide, checkpoints and settings); its state is read from there."""
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".launch.lock"):
        if runs.alive(_job(folder).get("pid")):
            raise ValueError("this slide is already being scored with these settings; wait for it")
        (folder / "job.log").unlink(missing_ok=True)
        meta = runs.read_json(folder / "meta.json")
        if meta:  # an earlier run's "stopped" or "failed" must not show while this one starts
            write_text(folder / "meta.json", json.dumps({**meta, "state": "starting", "error": ""}, indent=2))
        pid = _spawn(["slide", *flags, "--device", device], folder, device)
    log.info("started scoring %s (pid %d) on %s", folder.name, pid, device)


def start(config: TrainConfig, files: dict[str, str] | None = None) -> Path:
    """Starts a new training run in the background and returns its run folder.

    Args:
        config: the run; `device` must be "cpu" or "cuda" (one job runs per device) and `out`, when
            unset, becomes a new time-stamped folder under `runs.runs_dir()`.
        files: name -> text, written into the run folder before the job starts (e.g. the reviewed labels
            that `config.labels` points at).
    """
    config.validate()
    if config.device not in ("cpu", "cuda"):
        raise ValueError(f"a background job needs device cpu or cuda, got {config.device!r}")
    run_dir = runs.new_run_dir(config)
    config = replace(config, out=str(run_dir))
    # config.json now, not when the trainer has started: the run list shows its model and data at once
    return _launch(run_dir.parent, run_dir, config_flags(config), config.device, new=True,
                   config=config.to_json(), files=files)


def start_crossval(config: TrainConfig, folds: int) -> Path:
    """Starts `crossval` (K runs, then the out-of-fold table) in the background; returns its folder, a new
    crossval-<model>-<time> under `runs.runs_dir()`. It counts as the device's one job."""
    config.validate()
    if config.device not in ("cpu", "cuda"):
        raise ValueError(f"a background job needs device cpu or cuda, got {config.device!r}")
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    out = runs.runs_dir() / f"crossval-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    # crossval holds out each fold in turn: no validation share, id list or resume of its own
    flags = config_flags(replace(config, out=None, val_frac=TrainConfig().val_frac, val_ids=None,
                                 resume=None))
    return _launch(out.parent, out, [*flags, "--folds", str(folds), "--out", str(out)], config.device,
                   new=True, command="crossval")


def resume_crossval(folder: str | Path) -> Path:
    """Starts a stopped crossval again with its own command: finished folds are kept."""
    folder = Path(folder)
    job = _job(folder)
    if runs.alive(job.get("pid")):
        raise ValueError(f"{folder.name} is still running")
    if not job.get("command"):
        raise ValueError(f"{folder.name} was not started from the app; resume it with its crossval command")
    return _launch(folder.parent, folder, job["command"][4:], job["device"], new=False, command="crossval")


def resume(run_dir: str | Path, device: str = "cpu") -> Path:
    """Continues a stopped or failed run from its last checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise ValueError(f"{run_dir.name} has no last.pt to resume from")
    if runs.alive(_job(run_dir).get("pid")):
        raise ValueError(f"{run_dir.name} is still running")
    return _launch(run_dir.parent, run_dir, ["--resume", str(run_dir), "--device", device], device,
                   new=False)


def stop(run_dir: str | Path) -> bool:
    """Asks a running job to stop (SIGTERM: it saves a resumable checkpoint first). False when not running.

    Only one signal is sent: a second one would end the job at once, before its checkpoint is written.
    """
    current = runs.status(run_dir)
    if not current["alive"] or current["state"] not in runs.ACTIVE_STATES:
        return False
    os.kill(current["pid"], signal.SIGTERM)
    return True


def stop_crossval(folder: str | Path) -> bool:
    """Asks a running crossval job to stop (its fold saves a resumable checkpoint). False when not running."""
    return _terminate(Path(folder))


def _terminate(folder: Path) -> bool:
    """One SIGTERM to the job recorded in folder/job.json, when it runs; whether one was sent."""
    pid = _job(folder).get("pid")
    if not runs.alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    return True


def log_tail(run_dir: str | Path, lines: int = 15) -> str:
    """The last lines of the job's output, progress-bar redraws collapsed."""
    path = Path(run_dir) / "job.log"
    if not path.is_file():
        return ""
    text = path.read_bytes()[-20000:].decode(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _job(run_dir: Path) -> dict:
    return runs.read_json(run_dir / "job.json")


def stop_slide_map(folder: str | Path) -> bool:
    """Asks a running scoring job to stop (it saves the map so far first). False when not running."""
    return _terminate(Path(folder))
