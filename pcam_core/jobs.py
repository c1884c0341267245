"""Background training jobs: launch `python -m pcam_core train` detached, read its status, stop, resume.

A job is its run folder. The trainer writes `status.json`, `metrics.csv` and checkpoints there; this
module adds `job.json` (pid, device, command, start time) and `job.log` (the process's output). So
the state of a job is read from disk, not held in memory: it survives a page reload, a closed tab
or a restarted app, and several browser sessions see the same jobs. One job runs per device; the
check and the launch happen under a file lock, so two tabs pressing Start at once start one job.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd

from pcam_core.config import TrainConfig
from pcam_core.models import checkpoint_file

log = logging.getLogger(__name__)

PACKAGE_PARENT = Path(__file__).resolve().parents[1]
ACTIVE_STATES = ("starting", "running")  # then one of finished, stopped, failed
RUN_COLUMNS = [
    "run_id", "path", "model", "state", "epoch", "epochs", "best_auc", "device", "started", "checkpoint",
]
_children: dict[int, subprocess.Popen] = {}  # jobs this process launched, so their exit is reaped


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _alive(pid: int | None) -> bool:
    """Whether `pid` is a running pcam_core process (a reused pid of some other program is not)."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"pcam_core" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


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


@contextmanager
def _launch_lock(runs_dir: Path) -> Iterator[None]:
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / ".launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def active_job(runs_dir: Path, device: str) -> Path | None:
    """The run folder of the job running on `device` ("cpu" or "cuda"), if any."""
    if not runs_dir.is_dir():
        return None
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        job = _read_json(run_dir / "job.json")
        if job.get("device") == device and _alive(job.get("pid")):
            return run_dir
    return None


def _launch(runs_dir: Path, run_dir: Path, args: list[str], device: str, new: bool) -> Path:
    with _launch_lock(runs_dir):
        busy = active_job(runs_dir, device)
        if busy is not None:
            raise ValueError(f"a training job is already running on {device} ({busy.name}); "
                             "stop it or wait for it to finish")
        if new and run_dir.exists():
            raise ValueError(f"run folder {run_dir} already exists; choose another name")
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pcam_core", "train", *args]
        path = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
        with open(run_dir / "job.log", "ab") as out:
            proc = subprocess.Popen(command, cwd=PACKAGE_PARENT, env={**os.environ, "PYTHONPATH": path},
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        _children[proc.pid] = proc
        _write_json(run_dir / "job.json", {"pid": proc.pid, "device": device, "command": command,
                                           "started": time.time()})
    log.info("started training job %s (pid %d) on %s", run_dir.name, proc.pid, device)
    return run_dir


def start(config: TrainConfig) -> Path:
    """Starts a new training run in the background and returns its run folder.

    Args:
        config: the run; `device` must be "cpu" or "cuda" (one job runs per device) and `out`, when
            unset, becomes a new time-stamped folder under `config.runs_dir()`.
    """
    config.validate()
    if config.device not in ("cpu", "cuda"):
        raise ValueError(f"a background job needs device cpu or cuda, got {config.device!r}")
    run_dir = config.run_dir()
    config = replace(config, out=str(run_dir))
    return _launch(run_dir.parent, run_dir, config_flags(config), config.device, new=True)


def resume(run_dir: str | Path, device: str = "cpu") -> Path:
    """Continues a stopped or failed run from its last checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise ValueError(f"{run_dir.name} has no last.pt to resume from")
    if _alive(_read_json(run_dir / "job.json").get("pid")):
        raise ValueError(f"{run_dir.name} is still running")
    return _launch(run_dir.parent, run_dir, ["--resume", str(run_dir), "--device", device], device,
                   new=False)


def stop(run_dir: str | Path) -> bool:
    """Asks a running job to stop (SIGTERM: it saves a resumable checkpoint first). False when not running.

    Only one signal is sent: a second one would end the job at once, before its checkpoint is written.
    """
    current = status(run_dir)
    if not current["alive"] or current["state"] not in ACTIVE_STATES:
        return False
    os.kill(current["pid"], signal.SIGTERM)
    return True


def log_tail(run_dir: str | Path, lines: int = 15) -> str:
    """The last lines of the job's output, progress-bar redraws collapsed."""
    path = Path(run_dir) / "job.log"
    if not path.is_file():
        return ""
    text = path.read_bytes()[-20000:].decode(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def status(run_dir: str | Path) -> dict:
    """The job's status: the trainer's status.json, with `state` corrected by whether the process lives.

    A status.json older than the latest launch is stale (a resumed run before its first write); a
    "running" job whose process is gone died without saying so (killed, out of memory).
    """
    run_dir = Path(run_dir)
    job = _read_json(run_dir / "job.json")
    status_path = run_dir / "status.json"
    current = _read_json(status_path)
    pid = job.get("pid") or current.get("pid")  # a run started from the command line has no job.json
    alive = _alive(pid)
    if job and status_path.is_file() and status_path.stat().st_mtime < (run_dir / "job.json").stat().st_mtime:
        current = {k: v for k, v in current.items() if k not in ("state", "message")}
    state = current.get("state") or ("starting" if alive else "failed")
    message = current.get("message") or ""
    if state in ACTIVE_STATES and not alive:
        state = "failed"
        message = message or "the training process ended without a final status; see its output below"
    return {**current, "state": state, "message": message, "pid": pid, "alive": alive,
            "device": job.get("device"), "started": job.get("started")}


def metrics(run_dir: str | Path) -> pd.DataFrame:
    """Per-epoch metrics (epoch, train_loss, val_loss, val_auc, lr, seconds); empty before epoch 1."""
    path = Path(run_dir) / "metrics.csv"
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds"])


def checkpoint_path(run_dir: str | Path) -> Path | None:
    """best.pt, else last.pt, else None (before the first epoch ends)."""
    try:
        return checkpoint_file(run_dir)
    except FileNotFoundError:
        return None


def checkpoint_mtime(run_dir: str | Path) -> float:
    """When the run's checkpoint last changed: part of the key of anything computed from it."""
    path = checkpoint_path(run_dir)
    return path.stat().st_mtime if path else 0.0


def list_runs(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run folder, newest first: the checkpoint registry."""
    rows = []
    runs_dir = Path(runs_dir)
    for run_dir in runs_dir.iterdir() if runs_dir.is_dir() else []:
        if not any((run_dir / name).is_file() for name in ("job.json", "status.json")):
            continue
        config = _read_json(run_dir / "config.json")
        st = status(run_dir)
        started = st.get("started") or run_dir.stat().st_mtime  # runs started from the CLI have no job.json
        rows.append({"run_id": run_dir.name, "path": str(run_dir), "model": config.get("model", "?"),
                     "state": st["state"], "epoch": st.get("epoch"), "epochs": st.get("epochs"),
                     "best_auc": st.get("best_auc"), "device": st.get("device"),
                     "started": pd.Timestamp(started, unit="s"),
                     "checkpoint": checkpoint_path(run_dir) is not None})
    table = pd.DataFrame(rows, columns=RUN_COLUMNS).astype({"checkpoint": bool})
    return table.sort_values("started", ascending=False, ignore_index=True)
