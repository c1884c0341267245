"""The run folder: the one writer (`RunFolder`) and every reader (status, metrics, checkpoints, the run list).

A run folder holds config.json, status.json, metrics.csv, val_ids.csv, last.pt and best.pt, written by
the trainer; a run started from the app also has job.json (pid, device, command, start time) and job.log
(the process's output), written by `jobs`. Every file is replaced atomically, so the app can poll a
running job and never read half a file. Under torchrun only rank 0 writes; the other ranks hold a
RunFolder with `write=False`. This module does not import torch: the app lists runs without it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from pcam_core.atomic import atomic_write, write_text
from pcam_core.runs.config import TrainConfig

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds")
RUN_COLUMNS = ["run_id", "path", "model", "dataset", "state", "epoch", "epochs", "best_auc", "device",
               "started", "checkpoint", "data"]
ACTIVE_STATES = ("starting", "running")  # then one of finished, stopped, failed
CHECKPOINTS = ("best.pt", "last.pt")  # the one a run is used by, in order of preference
STATUS_EVERY_S = 2.0


def runs_dir() -> Path:
    """Where run folders go by default: $PCAM_RUNS_DIR, else models/runs in the repository."""
    return Path(os.environ.get("PCAM_RUNS_DIR") or Path(__file__).resolve().parents[2] / "models" / "runs")


def new_run_dir(cfg: TrainConfig) -> Path:
    """The run folder of `cfg`: its `out` when given, else a new time-stamped folder under runs_dir()."""
    if cfg.out:
        return Path(cfg.out)
    return runs_dir() / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunFolder:
    """Writes one run's files. `status.json` holds state (running, finished, failed, stopped), epoch,
    epochs, step, steps_per_epoch, metrics, best_auc, pid, message and updated (unix time)."""

    def __init__(self, path: Path, write: bool = True):
        self.path, self.write = Path(path), write
        self._status: dict = {}
        self._last_write = 0.0

    def start(self, cfg: TrainConfig, completed_epochs: int | None) -> None:
        """Creates a new run's folder, or trims metrics.csv to the checkpoint a resumed run continues from.

        Raises:
            ValueError: a new run pointed at a folder that already holds another run's checkpoints.
        """
        if not self.write:
            return
        if completed_epochs is None and (self.path / "last.pt").exists():
            raise ValueError(f"run folder {self.path} already holds a run; continue it with "
                             f"--resume {self.path} or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        if completed_epochs is None:
            self.save_config(cfg)
        rows = metrics_rows(self.path)[:completed_epochs or 0]
        write_text(self.path / "metrics.csv", ",".join(METRIC_COLUMNS) + "\n"
                   + "".join(",".join(str(r[c]) for c in METRIC_COLUMNS) + "\n" for r in rows))
        previous = read_json(self.path / "status.json")
        self.status(state="running", epochs=cfg.epochs, epoch=completed_epochs or 0,
                    step=previous.get("step", 0),
                    metrics=previous.get("metrics", {}), best_auc=previous.get("best_auc"),
                    message="resumed" if completed_epochs is not None else "", pid=os.getpid())

    def save_config(self, cfg: TrainConfig) -> None:
        """Writes the run's config.json (again once `auto` settings are resolved)."""
        if self.write:
            write_text(self.path / "config.json", cfg.to_json())

    def status(self, **fields) -> None:
        """Merges `fields` into status.json and writes it now."""
        self._status.update(fields, updated=time.time())
        if self.write:
            self.path.mkdir(parents=True, exist_ok=True)
            write_text(self.path / "status.json", json.dumps(self._status, indent=1) + "\n")
            self._last_write = time.monotonic()

    def progress(self, **fields) -> None:
        """Like `status`, but writes at most every STATUS_EVERY_S seconds (called every step); each write
        also appends the step and its loss to steps.csv, the curve a page draws before an epoch ends."""
        self._status.update(fields)
        if time.monotonic() - self._last_write >= STATUS_EVERY_S:
            self.status()
            if self.write and "loss" in fields:
                with open(self.path / "steps.csv", "a") as f:
                    f.write(f"{fields.get('step')},{fields['loss']:.6g}\n")

    def epoch_end(self, metrics: dict, best_auc: float) -> None:
        if self.write:
            with open(self.path / "metrics.csv", "a", newline="") as f:
                csv.writer(f).writerow([metrics[c] for c in METRIC_COLUMNS])
        self.status(epoch=metrics["epoch"], metrics=metrics, best_auc=best_auc)

    def save_val_ids(self, ids) -> None:
        """val_ids.csv: the patches this run validates on, so held-out metrics can be recomputed later."""
        if self.write:
            write_text(self.path / "val_ids.csv", "id\n" + "".join(f"{i}\n" for i in ids))

    def checkpoint(self, name: str, ckpt: dict) -> Path:
        """Writes checkpoint `name` (best.pt or last.pt) atomically; returns its path."""
        path = self.path / name
        if self.write:
            save_checkpoint(ckpt, path)
        return path


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Writes a checkpoint dict atomically: a reader never sees half a checkpoint.

    It is serialised in memory first: torch.save reports a full disk as a RuntimeError from its C++
    writer, while a plain file write says ENOSPC, which `atomic_write` turns into one clear message.
    """
    import torch  # only writers need it: the readers below keep this module torch-free for the app

    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


# ---- readers ---------------------------------------------------------------------------------------

def checkpoint_file(path: str | Path) -> Path:
    """A .pt file as given, or a run folder's best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINTS:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run folder {path} holds no best.pt or last.pt: "
                                f"has its training written one yet?")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return path


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


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint given as a run folder or as a .pt file inside one."""
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def val_ids(run_dir: str | Path) -> list[str]:
    """The ids a run validated on (its val_ids.csv).

    Raises:
        FileNotFoundError: the folder is not a run folder written by `train`.
    """
    path = Path(run_dir) / "val_ids.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{Path(run_dir)} has no val_ids.csv, so the patches it held out are "
                                f"unknown; give a run folder written by `pcam_core train`")
    try:
        table = pd.read_csv(path, dtype=str)
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path} is not a readable CSV ({e}); `train` writes it with one column, id") from e
    if "id" not in table.columns:
        raise ValueError(f"{path} has no `id` column (columns: {list(table.columns)}); `train` writes it")
    return table["id"].tolist()


def metrics_rows(run_dir: str | Path) -> list[dict]:
    """metrics.csv as a list of dicts of strings (empty before the first epoch)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics(run_dir: str | Path) -> pd.DataFrame:
    """Per-epoch metrics (epoch, train_loss, val_loss, val_auc, lr, seconds); empty before epoch 1."""
    try:
        return pd.read_csv(Path(run_dir) / "metrics.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=list(METRIC_COLUMNS))


def alive(pid: int | None) -> bool:
    """Whether `pid` is a running pcam_core process (a zombie or a reused pid of another program is not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return b"pcam_core" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return True  # no /proc (macOS): the pid exists


def status(run_dir: str | Path) -> dict:
    """The run's status: the trainer's status.json, with `state` corrected by whether the process lives.

    A status.json older than the latest launch is stale (a resumed run before its first write); a
    "running" job whose process is gone died without saying so (killed, out of memory).
    """
    run_dir = Path(run_dir)
    job = read_json(run_dir / "job.json")
    status_path = run_dir / "status.json"
    current = read_json(status_path)
    pid = job.get("pid") or current.get("pid")  # a run started from the command line has no job.json
    is_alive = alive(pid)
    if job and status_path.is_file() and status_path.stat().st_mtime < (run_dir / "job.json").stat().st_mtime:
        current = {k: v for k, v in current.items() if k not in ("state", "message")}
    state = current.get("state") or ("starting" if is_alive else "failed")
    message = current.get("message") or ""
    if state in ACTIVE_STATES and not is_alive:
        state = "failed"
        message = message or "the training process ended without a final status; see its output below"
    return {**current, "state": state, "message": message, "pid": pid, "alive": is_alive,
            "device": job.get("device"), "started": job.get("started")}


def steps(run_dir: str | Path) -> pd.DataFrame:
    """The training loss sampled every few seconds (steps.csv): columns step, loss."""
    path = Path(run_dir) / "steps.csv"
    try:
        return pd.read_csv(path, names=["step", "loss"]).dropna()
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["step", "loss"])


def timing(status: dict, now: float | None = None) -> str:
    """'4 min 10 s elapsed, about 2 min left' for an active run (the rest estimated from its share done)."""
    started = status.get("started")
    if not started:
        return ""
    elapsed = max((now or time.time()) - started, 0.0)
    share, _ = progress(status)
    text = f"{_duration(elapsed)} elapsed"
    if 0.02 <= share < 1:
        text += f", about {_duration(elapsed * (1 - share) / share)} left"
    return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def rename_run(run_dir: str | Path, name: str) -> Path:
    """Renames a run folder that is not running; returns the new path.

    Raises:
        ValueError: a running job, a name that is not a plain folder name, or one already taken.
    """
    run_dir = Path(run_dir)
    if status(run_dir)["alive"]:
        raise ValueError(f"{run_dir.name} is running: stop it before renaming it")
    name = name.strip()
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ValueError(f"{name!r} is not a folder name: use letters, digits, '-', '_' or '.'")
    target = run_dir.with_name(name)
    if target.exists():
        raise ValueError(f"a run called {name} already exists")
    run_dir.rename(target)
    return target


def delete_run(run_dir: str | Path) -> None:
    """Removes a run folder and all its files; never a running one.

    Raises:
        ValueError: the run is running, or the folder is not a run folder.
    """
    run_dir = Path(run_dir)
    if not any((run_dir / n).is_file() for n in ("status.json", "job.json", "config.json")):
        raise ValueError(f"{run_dir} is not a run folder; nothing removed")
    if status(run_dir)["alive"]:
        raise ValueError(f"{run_dir.name} is running: stop it before deleting it")
    shutil.rmtree(run_dir)


def progress(status: dict) -> tuple[float, str]:
    """(share of the run done, what it is doing) from a `status`, counting steps within the epoch.

    `step` in status.json counts steps since the run began; `epoch` counts the epochs finished.
    """
    epochs, per_epoch = status.get("epochs") or 0, status.get("steps_per_epoch") or 0
    step, finished = status.get("step") or 0, status.get("epoch") or 0
    if not epochs or not per_epoch:
        return 0.0, "starting: loading the data and the model"
    current = min(max(step - 1, 0) // per_epoch, epochs - 1)  # 0-based epoch of the latest step
    in_epoch = step - current * per_epoch
    share = min(step / (epochs * per_epoch), 1.0)
    if in_epoch >= per_epoch and finished <= current:
        return share, f"epoch {current + 1} of {epochs}: validating"
    return share, f"epoch {current + 1} of {epochs}, step {in_epoch} of {per_epoch}"


def list_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run folder under `folder`, newest first: the checkpoint registry (`data`: the resolved
    dataset folder it trained on, "" when unrecorded; `dataset`: that folder's name)."""
    rows = []
    folder = Path(folder)
    for run_dir in folder.iterdir() if folder.is_dir() else []:
        if not any((run_dir / name).is_file() for name in ("job.json", "status.json")):
            continue
        if (run_dir / "crossval.json").is_file() or read_json(run_dir / "job.json").get("kind") == "crossval":
            continue  # K runs inside: `crossval.progress`
        config = read_json(run_dir / "config.json")
        st = status(run_dir)
        started = st.get("started") or run_dir.stat().st_mtime  # runs started from the CLI have no job.json
        rows.append({"run_id": run_dir.name, "path": str(run_dir), "model": config.get("model", "?"),
                     "dataset": Path(config["data"]).name if config.get("data") else "?",
                     "state": st["state"], "epoch": st.get("epoch") or 0,
                     "epochs": st.get("epochs") or config.get("epochs"),
                     "best_auc": st.get("best_auc"), "device": st.get("device"),
                     "started": pd.Timestamp(started, unit="s"),
                     "checkpoint": checkpoint_path(run_dir) is not None,
                     "data": str(Path(config["data"]).expanduser().resolve()) if config.get("data") else ""})
    table = pd.DataFrame(rows, columns=RUN_COLUMNS).astype({"checkpoint": bool})
    return table.sort_values("started", ascending=False, ignore_index=True)


def read_json(path: Path) -> dict:
    """A JSON object from `path`; {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
