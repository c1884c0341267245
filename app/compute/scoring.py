"""The predictions the pages show: read from the on-disk cache, scored with a progress bar, or scored in a
background thread while the page shows what it can (Browse's first page)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.widgets.ui import MODEL_IN_USE, load_model
from pcam_core import runs
from pcam_core.data.readers import PatchStore


def predictions(store: PatchStore, run_dirs: list[Path], split: str, tta: int = 1) -> pd.DataFrame | None:
    """Predictions for a split (id, index, prob, spread, label) by the runs' models averaged; None without a
    model. `split` "holdout" is the patches the runs held out. The first time shows a progress bar; infer
    caches them on disk. A model that cannot score the data ends the page with one message."""
    if not run_dirs:
        return None
    from pcam_core.inference import infer

    bar = st.empty()
    names = ", ".join(r.name for r in run_dirs)

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Scoring {split} patches with {names}: {done:,} of {total:,}")

    try:
        table = infer.predictions_table([str(r) for r in run_dirs], store, split, tta=tta, progress=progress)
    except (ValueError, FileNotFoundError) as e:
        st.error(f"The model {names} could not score this dataset: {e}")
        st.stop()
    bar.empty()
    return table


class BackgroundScoring:
    """One split being scored in a thread of the server, shared by every session that asks for it.

    The thread loads its own copy of the model (`infer.predictions_table` does), so Inspect's CAM hooks on
    the shared copy never see its batches; the table lands in the predictions cache on disk.
    """

    def __init__(self, run_dirs: list[Path], store: PatchStore, split: str, tta: int):
        self.done, self.total, self.error, self.table = 0, 0, None, None
        self.partial: pd.DataFrame | None = None  # the patches scored so far, for a page that shows them
        self.split = split
        self.thread = threading.Thread(target=self._run, args=(run_dirs, store, split, tta), daemon=True,
                                       name=f"scoring-{split}")
        self.thread.start()

    def _run(self, run_dirs: list[Path], store: PatchStore, split: str, tta: int) -> None:
        from pcam_core.inference import infer

        def progress(done: int, total: int) -> None:
            self.done, self.total = done, total

        try:
            self.table = infer.predictions_table([str(r) for r in run_dirs], store, split, tta=tta,
                                                 progress=progress, partial=self._keep)
        except Exception as e:  # noqa: BLE001 - shown on the page that asked, never lost in a thread
            self.error = f"{type(e).__name__}: {e}"

    def _keep(self, table: pd.DataFrame) -> None:
        self.partial = table

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


_SCORING: dict[tuple, BackgroundScoring] = {}
_SCORING_LOCK = threading.Lock()


def predictions_soon(store: PatchStore, run_dirs: list[Path], split: str, tta: int = 1
                     ) -> tuple[pd.DataFrame | None, BackgroundScoring | None]:
    """The split's predictions when they are on disk; else (None, the background job scoring them).

    For pages that can show something before every patch is scored (Browse's first page). A job that
    failed is reported once per page as `predictions` would, and a later visit tries again.
    """
    if not run_dirs:
        return None, None
    from pcam_core.inference import infer

    checkpoints = [str(r) for r in run_dirs]
    try:
        table = infer.cached_predictions(checkpoints, store, split, tta=tta)
    except (ValueError, FileNotFoundError) as e:
        st.error(f"The model {', '.join(r.name for r in run_dirs)} could not score this dataset: {e}")
        st.stop()
    if table is not None:
        return table, None
    key = (tuple((c, runs.checkpoint_mtime(Path(c))) for c in checkpoints), store.fingerprint, split, tta)
    with _SCORING_LOCK:
        job = _SCORING.get(key)
        if job is None or (not job.running and job.error):
            for old in [k for k, j in _SCORING.items() if not j.running]:  # their tables are on disk
                del _SCORING[old]
            job = _SCORING[key] = BackgroundScoring(run_dirs, store, split, tta)
    if not job.running and job.error is None:  # finished (its table also in memory: the disk may be full)
        return job.table, None
    return None, job


@st.cache_data(max_entries=64)
def page_predictions(run: str, mtime: float, _store: PatchStore, fingerprint: str, indices: tuple[int, ...],
                     tta: int) -> pd.DataFrame:
    """prob and spread of a few patches (a page of tiles), with the app's copy of the model."""
    from pcam_core.inference import infer

    with MODEL_IN_USE:
        out = infer.predict_images(load_model(run, mtime), _store.batch(np.asarray(indices)), tta=tta)
    return pd.DataFrame({"index": indices, "prob": out["prob"], "spread": out["spread"]})
