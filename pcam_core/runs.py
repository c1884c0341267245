"""The run folder a training run writes: config.json, status.json, metrics.csv, val_ids.csv, last.pt, best.pt.

Every file is replaced atomically (temp file + rename), so the app can poll a running job and never read
half a file. Under torchrun only rank 0 writes; the other ranks hold a RunFolder with `write=False`.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from pcam_core.config import TrainConfig
from pcam_core.models import save_checkpoint

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds")
STATUS_EVERY_S = 2.0


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
            cfg.save(self.path / "config.json")
            _write_text(self.path / "metrics.csv", ",".join(METRIC_COLUMNS) + "\n")
        else:
            rows = self.metrics_rows()[:completed_epochs]
            _write_text(self.path / "metrics.csv", ",".join(METRIC_COLUMNS) + "\n"
                        + "".join(",".join(str(r[c]) for c in METRIC_COLUMNS) + "\n" for r in rows))
        previous = _read_json(self.path / "status.json")
        self.status(state="running", epochs=cfg.epochs, epoch=completed_epochs or 0,
                    step=previous.get("step", 0),
                    metrics=previous.get("metrics", {}), best_auc=previous.get("best_auc"),
                    message="resumed" if completed_epochs is not None else "", pid=os.getpid())

    def status(self, **fields) -> None:
        """Merges `fields` into status.json and writes it now."""
        self._status.update(fields, updated=time.time())
        if self.write:
            self.path.mkdir(parents=True, exist_ok=True)
            _write_text(self.path / "status.json", json.dumps(self._status, indent=1) + "\n")
            self._last_write = time.monotonic()

    def progress(self, **fields) -> None:
        """Like `status`, but writes at most every STATUS_EVERY_S seconds (called every step)."""
        self._status.update(fields)
        if time.monotonic() - self._last_write >= STATUS_EVERY_S:
            self.status()

    def epoch_end(self, metrics: dict, best_auc: float) -> None:
        if self.write:
            with open(self.path / "metrics.csv", "a", newline="") as f:
                csv.writer(f).writerow([metrics[c] for c in METRIC_COLUMNS])
        self.status(epoch=metrics["epoch"], metrics=metrics, best_auc=best_auc)

    def save_val_ids(self, ids) -> None:
        """val_ids.csv: the patches this run validates on, so held-out metrics can be recomputed later."""
        if self.write:
            _write_text(self.path / "val_ids.csv", "id\n" + "".join(f"{i}\n" for i in ids))

    def checkpoint(self, name: str, ckpt: dict) -> Path:
        path = self.path / name
        if self.write:
            save_checkpoint(ckpt, path)
        return path

    def metrics_rows(self) -> list[dict]:
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
