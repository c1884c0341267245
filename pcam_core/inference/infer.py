"""Batched prediction with dihedral test-time augmentation, and a cached predictions table.

`predict` reads uint8 batches from the PatchStore (the next batch is read on a thread while the model
runs), converts them on the device, runs every model on every requested dihedral view and averages the
probabilities: over views (TTA) and over models (an ensemble). `predictions_table` wraps it with an
on-disk cache keyed by the checkpoint files and the data, so the app never predicts the same patches twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pcam_core.atomic import write_cache
from pcam_core.data.readers import open_dataset
from pcam_core.data.splits import holdout_indices
from pcam_core.data.transforms import dihedral, to_model_input
from pcam_core.geometry import as_patches
from pcam_core.inference.metrics import auc_ci, roc_auc
from pcam_core.models import calibrate
from pcam_core.models.calibrate import Setting
from pcam_core.models.distributed import Distributed
from pcam_core.models.registry import Classifier, load, read_checkpoint, resolve_device
from pcam_core.runs.folder import checkpoint_file

log = logging.getLogger(__name__)

TTA_VIEWS = (1, 2, 4, 8)
Progress = Callable[[int, int], None]


def inference_setting(classifiers: Sequence[Classifier], device: torch.device, precision: str = "auto",
                      batch_size: int | None = None, patches: int | None = None,
                      compile: bool | None = False) -> Setting:
    """How to run `classifiers` on `device`: precision, memory format and batch size as given, the rest as
    `calibrate.choose` timed fastest for the first of them on this machine (an ensemble runs its members
    alike). On a GPU: bf16 autocast, channels_last, 2,048 patches a batch (it needs thousands to stay busy).

    Args:
        patches: forward passes of a patch the call will make (views x patches).
        compile: torch.compile the models; None: when timed faster over `patches`, compile time included.
    """
    first = classifiers[0]
    return calibrate.choose(first.name, first.crop, "infer", device, batch_size=batch_size,
                            precision=precision, compile=compile, patches=patches)


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be a positive number of patches, got {batch_size}")


def view_indices(tta: int) -> tuple[int, ...]:
    """The dihedral transforms (`transforms.dihedral` numbering) averaged for `tta` views.

    2: identity and a flip; 4: adds the half turn and the other flip (the Klein four-group); 8: all.
    """
    views = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: tuple(range(8))}
    if tta not in views:
        raise ValueError(f"tta must be one of {TTA_VIEWS}, got {tta}")
    return views[tta]


def predict(classifiers: Sequence[Classifier], store, indices=None, tta: int = 1,
            device: str | torch.device = "auto", batch_size: int | None = None, precision: str = "auto",
            progress: Progress | None = None, compile: bool | None = False,
            on_rows: Callable[[int, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Tumour probabilities for patches of `store`, averaged over TTA views and over classifiers.

    Args:
        classifiers: one or more `models.Classifier` (several: an ensemble, probabilities averaged).
        store: the PatchStore to read.
        indices: store indices to predict (default: every patch), in the order wanted.
        tta: dihedral views averaged per patch: 1, 2, 4 or 8.
        device: "auto", "cpu", "cuda" or a torch.device (the classifiers are moved there).
        batch_size: patches per forward pass (default: calibrated on a CPU, 2,048 on a GPU).
        precision: "auto" (bf16 autocast on CUDA; on a CPU, calibrated), "bf16" or "fp32".
        progress: called as progress(done, total) after each batch.
        compile: torch.compile the models (None: when calibration finds it pays off for this many patches).
        on_rows: see `predict_rows`: the rows done so far, for a caller that shows them before the end.

    Returns:
        dict with "prob" (N,) float32, "spread" (N,) float32 (std of the probability over the TTA views,
        0 for tta=1) and "views" (N, tta) float32 (the probability per view, ensemble-averaged).
    """
    indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    return predict_rows(classifiers, lambda start, stop: store.batch(indices[start:stop]), len(indices), tta,
                        device, batch_size, precision, progress, compile, on_rows)


def predict_images(classifier: Classifier, images: np.ndarray, tta: int = 1,
                   device: str | torch.device = "auto") -> dict[str, np.ndarray]:
    """`predict` for patches in memory (an upload): images (N, 96, 96, 3) uint8."""
    images = as_patches(images)
    return predict_rows([classifier], lambda start, stop: images[start:stop], len(images), tta, device, None,
                    "auto", None)


def predict_rows(classifiers: Sequence[Classifier], read_rows: Callable[[int, int], np.ndarray], n: int,
                 tta: int, device, batch_size: int | None, precision: str,
                 progress: Progress | None, compile: bool | None = False,
                 on_rows: Callable[[int, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """`predict` over any source of patches: read_rows(start, stop) returns rows start..stop of `n`
    (B, 96, 96, 3) uint8, called in order on a reader thread, one batch ahead of the model. `on_rows(done,
    views)` after each batch hands over the (n, tta) per-view probabilities, the first `done` rows final."""
    if isinstance(classifiers, Classifier) or not classifiers:
        raise ValueError("predict takes a non-empty list of Classifiers (models.load(path) makes one)")
    views = view_indices(tta)
    dev = resolve_device(device)
    _check_batch_size(batch_size)
    setting = inference_setting(classifiers, dev, precision, batch_size, n * tta * len(classifiers), compile)
    layout = torch.channels_last if setting.channels_last else torch.contiguous_format
    for c in classifiers:  # outside inference mode, so the same modules still serve Grad-CAM afterwards
        c.module.to(dev, memory_format=layout).eval()
    modules = [torch.compile(c.module) if setting.compile else c.module for c in classifiers]
    batch_size = setting.batch_size
    out = np.empty((n, tta), dtype=np.float32)
    dtype = setting.dtype
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def read(start: int) -> torch.Tensor:
        x = torch.from_numpy(read_rows(start, start + batch_size))  # (B, 96, 96, 3) uint8
        return x.pin_memory() if dev.type == "cuda" else x

    with ThreadPoolExecutor(max_workers=1) as reader, torch.inference_mode():
        pending = reader.submit(read, 0) if n else None
        for start in range(0, n, batch_size):
            x = pending.result().to(dev, non_blocking=True)
            if start + batch_size < n:
                pending = reader.submit(read, start + batch_size)
            rows = len(x)
            if setting.compile and rows < batch_size:  # padded: a new shape would compile the graph again
                x = torch.cat([x, x.new_zeros((batch_size - rows, *x.shape[1:]))])
            probs = torch.zeros(len(x), tta, device=dev)
            for c, module in zip(classifiers, modules, strict=True):
                inputs = to_model_input(x, c.normalization, crop=c.crop)
                for j, k in enumerate(views):
                    with autocast:
                        logits = module(dihedral(inputs, k).contiguous(memory_format=layout))
                    probs[:, j] += torch.sigmoid(logits.float().reshape(-1))
            out[start:start + rows] = (probs[:rows] / len(classifiers)).cpu().numpy()
            if progress is not None:
                progress(start + rows, n)
            if on_rows is not None:
                on_rows(start + rows, out)
    return {"prob": out.mean(axis=1), "spread": out.std(axis=1), "views": out}


def cache_key(checkpoints: Sequence[str | Path], store, split: str, tta: int, precision: str) -> str:
    """A short hash of what makes a result computed from these checkpoints on this data current: each
    checkpoint file's path, mtime and size, the data fingerprint, the split, the views and the precision."""
    files = []
    for c in checkpoints:
        f = checkpoint_file(c)
        st = f.stat()
        files.append([str(f.resolve()), st.st_mtime_ns, st.st_size])
    key = json.dumps({"checkpoints": files, "data": store.fingerprint, "split": split, "tta": tta,
                      "precision": precision})
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def precision_used(precision: str, device: str | torch.device) -> str:
    """What `precision` ("auto", "bf16", "fp32") comes to on `device`, for cache keys: "auto" is bf16 on a
    GPU and stays "auto" on a CPU, where it means the precision calibrated for the model on this machine."""
    if precision == "auto" and resolve_device(device).type == "cuda":
        return "bf16"
    return precision


def split_indices(checkpoints: Sequence[str | Path], store, split: str) -> np.ndarray:
    """Store indices of `split`; "holdout": the patches none of the checkpoints' runs trained on."""
    return holdout_indices(checkpoints, store) if split == "holdout" else store.split_indices(split)


def _cache_path(checkpoints: Sequence[str | Path], store, split: str, tta: int, device: str,
                precision: str) -> Path:
    key = cache_key(checkpoints, store, split, tta, precision_used(precision, device))
    return Path(store.cache_dir) / "predictions" / f"{split}-tta{tta}-{key}.parquet"


def cached_predictions(checkpoints: Sequence[str | Path], store, split: str, tta: int = 1,
                       device: str = "auto", precision: str = "auto") -> pd.DataFrame | None:
    """The table `predictions_table` would return, when it is already on disk; else None (nothing is
    predicted)."""
    path = _cache_path(checkpoints, store, split, tta, device, precision)
    try:
        return pd.read_parquet(path) if path.is_file() else None
    except (OSError, ValueError):  # a cache being replaced or damaged: predict afresh
        return None


def predictions_table(checkpoints: Sequence[str | Path], store, split: str, tta: int = 1,
                      device: str = "auto",
                      batch_size: int | None = None, precision: str = "auto",
                      progress: Progress | None = None, compile: bool | None = False,
                      partial: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Predictions for one split as a table, read from the on-disk cache when already computed.

    The cache (store.cache_dir/predictions) is keyed by each checkpoint file's path, mtime and size, the
    data fingerprint, the split, `tta` and the precision used (bf16 or fp32, whatever the device); a
    retrained checkpoint or changed data predicts afresh. Under torchrun each rank predicts its shard on
    its own device, every rank gets the whole table back, and rank 0 alone writes the cache.

    Args:
        split: "train", "valid", "test", or "holdout" (the patches the checkpoints' training runs held out
            for validation, see `holdout_indices`).
        partial: called now and then with the table of the patches predicted so far (one process only),
            for a page that shows them before the split is done.

    Returns:
        DataFrame with columns id, index (store index), prob, spread, label (-1 where unknown).
    """
    if isinstance(checkpoints, (str, Path)) or not checkpoints:
        raise ValueError("predictions_table takes a non-empty list of checkpoint paths")
    view_indices(tta)
    _check_batch_size(batch_size)  # before the cache: a bad option fails even when nothing is predicted
    indices = split_indices(checkpoints, store, split)
    path = _cache_path(checkpoints, store, split, tta, device, precision)
    if path.is_file():
        log.debug("predictions from cache %s", path)
        return pd.read_parquet(path)
    ctx = Distributed(device)  # under torchrun each rank predicts every world-th patch on its own device
    classifiers = [load(c) for c in checkpoints]
    rows = _partial_rows(store, indices, partial) if partial is not None and ctx.world == 1 else None
    result = predict(classifiers, store, ctx.shard(indices), tta=tta, device=ctx.device,
                     batch_size=batch_size, precision=precision, progress=progress, compile=compile,
                     on_rows=rows)
    result = {k: ctx.unshard([part[k] for part in ctx.gather(result)]) for k in ("prob", "spread")}
    table = pd.DataFrame({"id": store.ids[indices], "index": indices, "prob": result["prob"],
                          "spread": result["spread"], "label": store.labels[indices]})
    if not ctx.main:
        return table
    write_cache(path, lambda tmp: table.to_parquet(tmp, index=False))
    return table


def _partial_rows(store, indices: np.ndarray, partial: Callable[[pd.DataFrame], None],
                  every_s: float = 1.0) -> Callable[[int, np.ndarray], None]:
    """An `on_rows` that hands `partial` the table of the rows done so far, at most every `every_s`."""
    last = [0.0]

    def on_rows(done: int, views: np.ndarray) -> None:
        if time.monotonic() - last[0] < every_s and done < len(indices):
            return
        last[0] = time.monotonic()
        part = views[:done]
        partial(pd.DataFrame({"id": store.ids[indices[:done]], "index": indices[:done], "prob": part.mean(1),
                              "spread": part.std(1), "label": store.labels[indices[:done]]}))

    return on_rows


def held_out_auc(checkpoint: str) -> dict | None:
    """The run's held-out ROC AUC with its bootstrap interval, for the model card; None when the run's
    dataset or held-out patches cannot be read here."""
    data = read_checkpoint(checkpoint_file(checkpoint)).get("config", {}).get("data")
    if not data:
        return None
    try:
        table = predictions_table([checkpoint], open_dataset(data), "holdout", tta=1)
        known = table[table["label"] >= 0]
        return {"auc": roc_auc(known["label"], known["prob"]), "ci": auc_ci(known["label"], known["prob"]),
                "n": len(known)}
    except (ValueError, OSError, RuntimeError):  # no data here, no held-out patches, one class, no memory
        return None
