"""Cross-validated (out-of-fold) predictions, and the label errors confident learning finds in them.

`crossval` trains K models on K stratified folds of the labelled training patches: each patch is held out
by exactly one fold's run (through `TrainConfig.val_ids`), and that run's P(tumour) for it is the patch's
out-of-fold probability, the input cleanlab asks its users to bring (cleanlab #555). `label_issues` runs
confident learning on them. A crossval folder holds:

    crossval.json       the base config and the number of folds: a resumed crossval must match
    folds.csv           id, fold (1..K), drawn once, stratified by label and seeded
    fold-<k>/           the fold's run folder (train's layout); fold-<k>-val_ids.csv its held-out ids
    oof.csv             id, label, prob, fold: written when every fold has finished
    label_issues.csv    `label_issues(oof)`, written by `label-issues` and the app

A stopped or killed crossval resumes fold by fold: finished folds are kept, a fold with a last.pt
continues from it, any other fold starts again. Under torchrun every fold trains on all ranks and rank 0
writes the shared files.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pcam_core import runs
from pcam_core.atomic import atomic_write
from pcam_core.data.splits import default_groups, read_groups
from pcam_core.runs.config import TrainConfig

OOF_COLUMNS = ("id", "label", "prob", "fold")
ISSUE_COLUMNS = ("id", "label", "prob", "fold", "quality", "issue", "rank")


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def assign_folds(ids: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                 groups: np.ndarray | None = None) -> np.ndarray:
    """Fold numbers 1..folds for labelled patches, stratified by label and seeded; with `groups`, every
    group in one fold (scikit-learn's StratifiedGroupKFold).

    Raises:
        ValueError: fewer than 2 folds, more folds than the rarer class has patches, or than there are
            groups.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    counts = np.bincount(labels, minlength=2)
    if counts.min() < folds:
        raise ValueError(f"{folds} folds need at least {folds} patches of each class; the data has "
                         f"{counts[1]} tumour and {counts[0]} normal: use --folds {max(2, counts.min())} or "
                         f"fewer")
    fold = np.zeros(len(ids), np.int64)
    if groups is not None:
        if len(set(groups)) < folds:
            raise ValueError(f"{folds} folds by group need at least {folds} groups; the data has "
                             f"{len(set(groups))}")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(ids, labels, groups), start=1):
        fold[held] = k
    return fold


def _store(cfg: TrainConfig):
    """The dataset with the labels the runs train on (`cfg.labels` in place of the given ones)."""
    from pcam_core.data.readers import open_dataset
    from pcam_core.data.splits import relabelled

    store = open_dataset(cfg.data)
    if cfg.labels:
        store.labels, _ = relabelled(store, cfg.labels)
    return store


def _setup(cfg: TrainConfig, folds: int, out: Path) -> pd.DataFrame:
    """The crossval folder's fold table: drawn and written on the first start, read and checked after."""

    settings = {"folds": folds, "config": {**asdict(cfg), "out": None, "val_ids": None, "resume": None,
                                           "device": None, "threads": None}}
    saved = out / "crossval.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in before["config"] if before["config"][k] != settings["config"].get(k))
            changed += ["folds"] if before["folds"] != folds else []
            raise ValueError(f"{out} holds a crossval with other settings ({', '.join(changed)}); resume it "
                             f"with the same ones or choose a new --out")
        return pd.read_csv(out / "folds.csv", dtype={"id": str})
    store = _store(cfg)
    labelled = store.split_indices("train")
    labelled = labelled[store.labels[labelled] >= 0]
    if cfg.exclude_ids:
        labelled = np.setdiff1d(labelled, store.index_of(pd.read_csv(cfg.exclude_ids, dtype=str)["id"]))
    if not len(labelled):
        raise ValueError(f"{store.root} has no labelled training patches to cross-validate")
    groups = read_groups(store, cfg.groups)[labelled] if cfg.groups else None
    table = pd.DataFrame({"id": store.ids[labelled],
                          "fold": assign_folds(store.ids[labelled], store.labels[labelled], folds, cfg.seed,
                                               groups)})
    # every rank writes the same files (the draw is seeded; each write is atomic), so no rank starts a
    # fold before its id list exists; crossval.json last: it marks the folder as set up
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "folds.csv") as tmp:
        table.to_csv(tmp, index=False)
    for k in range(1, folds + 1):
        with atomic_write(out / f"fold-{k}-val_ids.csv") as tmp:
            table.loc[table["fold"] == k, ["id"]].to_csv(tmp, index=False)
    with atomic_write(out / "crossval.json") as tmp:
        Path(tmp).write_text(json.dumps(settings, indent=1))
    return table


def crossval(cfg: TrainConfig, folds: int, out: str | Path,
             stop: threading.Event | None = None) -> Iterator[dict]:
    """Trains one run per fold into `out`, then writes oof.csv; yields train's events with a `fold` key,
    then {"type": "finished", "oof_auc", "path"} (or "stopped" when `stop` was set).

    Args:
        cfg: the training settings every fold uses (`out`, `val_ids` and `resume` are set per fold).
        folds: K >= 2.
        out: the crossval folder (created; an existing one with the same settings is resumed).
    """
    from pcam_core.models.distributed import Distributed

    group = Distributed(cfg.device)  # under torchrun: one process group for every fold
    try:
        yield from _folds(cfg, folds, Path(out), stop)
    finally:
        group.close()


def _folds(cfg: TrainConfig, folds: int, out: Path, stop: threading.Event | None) -> Iterator[dict]:
    from pcam_core.training.train import fit

    cfg = default_groups(cfg)
    table = _setup(cfg, folds, out)
    for k in range(1, folds + 1):
        run_dir = out / f"fold-{k}"
        state = runs.status(run_dir).get("state") if run_dir.is_dir() else None
        if state == "finished":
            yield {"type": "fold_done", "fold": k, "folds": folds, "reused": True}
            continue
        if (run_dir / "last.pt").is_file():
            fold_cfg = replace(cfg, resume=str(run_dir), out=str(run_dir))
        else:
            if run_dir.exists() and _main_rank():
                shutil.rmtree(run_dir)  # started, but killed before a checkpoint: nothing to keep
            fold_cfg = replace(cfg, out=str(run_dir), val_ids=str(out / f"fold-{k}-val_ids.csv"), resume=None)
        for event in fit(fold_cfg, stop):
            yield {**event, "fold": k, "folds": folds}
            if event["type"] == "stopped":
                return
        yield {"type": "fold_done", "fold": k, "folds": folds, "reused": False}
    oof = out_of_fold(out, cfg, table)
    from pcam_core.inference.metrics import roc_auc

    yield {"type": "finished", "oof_auc": roc_auc(oof["label"].to_numpy(), oof["prob"].to_numpy()),
           "path": str(out / "oof.csv"), "n": len(oof)}


def out_of_fold(out: Path, cfg: TrainConfig, table: pd.DataFrame) -> pd.DataFrame:
    """Every fold's run scores the patches it held out; the table of all of them, written as oof.csv."""
    from pcam_core.inference import infer

    store = _store(cfg)  # the label column: what the runs trained on, which cleanlab then questions
    parts = []
    for k in sorted(table["fold"].unique()):
        scored = infer.predictions_table([str(out / f"fold-{k}")], store, "holdout", tta=cfg.val_tta,
                                         device=cfg.device, precision=cfg.precision)
        parts.append(scored.assign(fold=int(k))[list(OOF_COLUMNS)])
    oof = pd.concat(parts, ignore_index=True)
    if len(oof) != len(table) or set(oof["id"]) != set(table["id"]):
        raise ValueError(f"the folds' held-out patches ({len(oof)}) are not the {len(table)} patches of "
                         f"{out / 'folds.csv'}: the data changed since the crossval started; start a new one")
    if _main_rank():
        with atomic_write(out / "oof.csv") as tmp:
            oof.to_csv(tmp, index=False)
    return oof


def read_oof(crossval_dir: str | Path) -> pd.DataFrame:
    """oof.csv of a finished crossval folder.

    Raises:
        FileNotFoundError: no oof.csv (not a crossval folder, or its folds have not all finished).
        ValueError: the file lacks a column.
    """
    path = Path(crossval_dir) / "oof.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `crossval` into {crossval_dir} first (a stopped one "
                                f"resumes with the same command)")
    oof = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in OOF_COLUMNS if c not in oof.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it was not written by crossval")
    return oof


def label_issues(oof: pd.DataFrame) -> pd.DataFrame:
    """Confident learning (cleanlab) on out-of-fold probabilities: which given labels are likely wrong.

    `quality` is cleanlab's label quality score (self-confidence: the out-of-fold probability of the given
    label; low means the models of the other folds disagree with it), `issue` its verdict from the
    confident joint ("prune by noise rate"), `rank` 1 for the least trustworthy label.

    Returns:
        oof's rows with quality, issue and rank, worst first.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = oof["label"].to_numpy(np.int64)
    if set(np.unique(labels)) - {0, 1}:
        raise ValueError("out-of-fold labels must be 0 or 1")
    if len(np.unique(labels)) < 2:
        raise ValueError("label issues need both classes among the out-of-fold labels")
    raw = oof["prob"].to_numpy(np.float64)
    bad = ~np.isfinite(raw) | (raw < 0) | (raw > 1)
    if bad.any():  # a fold whose training diverged: ranking the rest would hide every error in that fold
        folds = sorted(set(oof.loc[bad, "fold"])) if "fold" in oof else []
        raise ValueError(f"{int(bad.sum()):,} out-of-fold probabilities are not numbers in [0, 1]"
                         + (f" (fold(s) {', '.join(map(str, folds))})" if folds else "")
                         + ": that training diverged; run the crossval again with a lower --lr")
    p = np.clip(raw, 1e-6, 1 - 1e-6)
    probs = np.column_stack([1 - p, p])
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    # n_jobs=1: cleanlab's default forks a worker per core, which is slower at these sizes and unsafe in a
    # threaded process such as the app's server (a fork may inherit a held lock)
    issue = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    table = oof.assign(quality=quality, issue=issue)
    table = table.sort_values(["quality", "id"], kind="stable", ignore_index=True)
    return table.assign(rank=np.arange(1, len(table) + 1))[list(ISSUE_COLUMNS)]


def read_label_issues(crossval_dir: str | Path) -> pd.DataFrame:
    """label_issues.csv of a crossval folder when it is newer than its oof.csv, else computed afresh."""
    path = Path(crossval_dir) / "label_issues.csv"
    oof = Path(crossval_dir) / "oof.csv"
    if path.is_file() and oof.is_file() and path.stat().st_mtime >= oof.stat().st_mtime:
        table = pd.read_csv(path, dtype={"id": str})
        if list(table.columns) == list(ISSUE_COLUMNS):
            return table.astype({"issue": bool})
    return label_issues(read_oof(crossval_dir))


def write_label_issues(crossval_dir: str | Path, out: str | Path | None = None) -> pd.DataFrame:
    """`label_issues` of a crossval folder's oof.csv, written to `out` (default: label_issues.csv in it)."""
    table = label_issues(read_oof(crossval_dir))
    path = Path(out) if out else Path(crossval_dir) / "label_issues.csv"
    with atomic_write(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def list_crossvals(folder: str | Path) -> pd.DataFrame:
    """Finished crossval folders under `folder` (the runs folder), newest first: path, data (the resolved
    dataset folder), model, folds."""
    rows = []
    for path in list_folders(folder):
        if not (path / "crossval.json").is_file() or not (path / "oof.csv").is_file():
            continue
        settings = runs.read_json(path / "crossval.json")
        config = settings.get("config", {})
        data = str(Path(config["data"]).expanduser().resolve()) if config.get("data") else ""
        rows.append({"path": str(path), "data": data, "model": config.get("model", "?"),
                     "folds": settings.get("folds"), "mtime": (path / "oof.csv").stat().st_mtime})
    table = pd.DataFrame(rows, columns=["path", "data", "model", "folds", "mtime"])
    return table.sort_values("mtime", ascending=False, ignore_index=True)


def progress(folder: str | Path) -> dict:
    """Where a crossval folder stands: state ("running", "finished", "stopped"), folds, fold (the one
    training or last trained), that fold's run status, and pid (the job's, when started from the app)."""
    folder = Path(folder)
    job = runs.read_json(folder / "job.json")
    settings = runs.read_json(folder / "crossval.json")
    command = job.get("command") or []
    folds = settings.get("folds") or (int(command[command.index("--folds") + 1]) if "--folds" in command
                                      else None)
    started = sorted((int(p.name.split("-")[1]) for p in folder.glob("fold-*") if p.is_dir()), reverse=True)
    fold = started[0] if started else 0
    status = runs.status(folder / f"fold-{fold}") if fold else {"state": "starting"}
    if (folder / "oof.csv").is_file():
        state = "finished"
    elif runs.alive(job.get("pid")) or status.get("alive"):  # from the app, or a CLI run in its fold
        state = "running"
    else:
        state = "stopped"
    return {"state": state, "folds": folds, "fold": fold, "run": status, "pid": job.get("pid"),
            "model": settings.get("config", {}).get("model") or (command[command.index("--model") + 1]
                                                                 if "--model" in command else "?")}


def list_folders(folder: str | Path) -> list[Path]:
    """Every crossval folder under `folder` (started from the app or the CLI, finished or not), newest
    first."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if p.is_dir() and ((p / "crossval.json").is_file()
             or runs.read_json(p / "job.json").get("kind") == "crossval")] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
