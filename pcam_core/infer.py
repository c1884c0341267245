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
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pcam_core.distributed import Distributed
from pcam_core.models import BaseCNN, checkpoint_file, load_checkpoint, read_checkpoint, resolve_device
from pcam_core.transforms import dihedral, to_model_input

log = logging.getLogger(__name__)

TTA_VIEWS = (1, 2, 4, 8)
Progress = Callable[[int, int], None]
# a checkpoint path (file or run folder), or what load_checkpoint returned for one
Checkpoint = str | Path | tuple[nn.Module, dict]


def _as_list(checkpoints) -> list[Checkpoint]:
    if isinstance(checkpoints, (str, Path)) or (isinstance(checkpoints, tuple) and len(checkpoints) == 2
                                                and isinstance(checkpoints[0], nn.Module)):
        return [checkpoints]
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("no checkpoint given")
    return checkpoints


def load_models(checkpoints, device: torch.device) -> list[tuple[nn.Module, dict]]:
    """(model in eval mode on `device`, checkpoint dict) for each checkpoint path or loaded pair."""
    loaded = []
    for c in _as_list(checkpoints):
        model, ckpt = load_checkpoint(c, device="cpu") if isinstance(c, (str, Path)) else c
        # channels_last: 1.5-2.5x faster on this CPU (oneDNN) and on GPUs
        loaded.append((model.to(device, memory_format=torch.channels_last).eval(), ckpt))
    return loaded


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 when autocast should run, else None (plain float32).

    "auto" picks bf16 on CUDA and on CPUs with AMX tiles, where oneDNN runs bf16 convolutions on them
    (1.6x for base_cnn and 2.0x for efficientnet_lite0 on this machine's Xeon; see BENCHMARKS.md).
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        fast = device.type == "cuda" or torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if fast else None
    return torch.bfloat16 if precision == "bf16" else None


def default_batch_size(device: torch.device, models: list[tuple[nn.Module, dict]] = ()) -> int:
    """Patches per forward pass: 2048 on a GPU (it needs thousands to stay busy); on a CPU small batches.

    On a CPU the convolutions are fast (oneDNN, AMX) and the passes between them (ReLU, pooling,
    normalisation) are bound by memory, so big batches spill the caches; tiny ones pay per-layer
    overhead. Measured through `predict` in bf16 on the 2-core Xeon (BENCHMARKS.md): base_cnn, few
    layers with wide activations, 1,360 patches/s at 32 against 640 at 512; efficientnet_lite0, many
    small layers, 716 at 64 against 560 at 32 and 322 at 512. An ensemble takes its members' smallest.
    """
    if device.type == "cuda":
        return 2048
    return min((32 if isinstance(model, BaseCNN) else 64 for model, _ in models), default=64)


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be a positive number of patches, got {batch_size}")


def _view_indices(tta: int) -> tuple[int, ...]:
    """The dihedral transforms (`transforms.dihedral` numbering) averaged for `tta` views.

    2: identity and a flip; 4: adds the half turn and the other flip (the Klein four-group); 8: all.
    """
    views = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: tuple(range(8))}
    if tta not in views:
        raise ValueError(f"tta must be one of {TTA_VIEWS}, got {tta}")
    return views[tta]


@torch.inference_mode()
def predict(checkpoints, store, indices=None, tta: int = 1, device: str | torch.device = "auto",
            batch_size: int | None = None, precision: str = "auto",
            progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Tumour probabilities for patches of `store`, averaged over TTA views and over checkpoints.

    Args:
        checkpoints: a checkpoint path (file or run folder), a (model, ckpt) pair from
            `models.load_checkpoint`, or a list of them (an ensemble: probabilities are averaged).
        store: the PatchStore to read.
        indices: store indices to predict (default: every patch), in the order wanted.
        tta: dihedral views averaged per patch: 1, 2, 4 or 8.
        device: "auto", "cpu", "cuda" or a torch.device.
        batch_size: patches per forward pass (default: `default_batch_size`, sized to the model on CPU).
        precision: "auto" (bf16 autocast on CUDA and on CPUs with AMX), "bf16" or "fp32".
        progress: called as progress(done, total) after each batch.

    Returns:
        dict with "prob" (N,) float32, "spread" (N,) float32 (std of the probability over the TTA views,
        0 for tta=1) and "views" (N, tta) float32 (the probability per view, ensemble-averaged).
    """
    views = _view_indices(tta)
    dev = resolve_device(device)
    _check_batch_size(batch_size)
    dtype = autocast_dtype(precision, dev)
    models = load_models(checkpoints, dev)
    batch_size = batch_size or default_batch_size(dev, models)
    indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    out = np.empty((len(indices), tta), dtype=np.float32)
    starts = range(0, len(indices), batch_size)
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def read(start: int) -> torch.Tensor:
        x = torch.from_numpy(store.batch(indices[start:start + batch_size]))  # (B, 96, 96, 3) uint8
        return x.pin_memory() if dev.type == "cuda" else x

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0) if len(indices) else None
        for start in starts:
            x = pending.result().to(dev, non_blocking=True)
            if start + batch_size < len(indices):
                pending = reader.submit(read, start + batch_size)
            probs = torch.zeros(len(x), tta, device=dev)
            for model, ckpt in models:
                inputs = to_model_input(x, ckpt["normalization"], crop=ckpt.get("config", {}).get("crop", 96))
                for j, k in enumerate(views):
                    with autocast:
                        logits = model(dihedral(inputs, k).contiguous(memory_format=torch.channels_last))
                    probs[:, j] += torch.sigmoid(logits.float().reshape(-1))
            out[start:start + len(x)] = (probs / len(models)).cpu().numpy()
            if progress is not None:
                progress(start + len(x), len(indices))
    return {"prob": out.mean(axis=1), "spread": out.std(axis=1), "views": out}


def holdout_indices(checkpoints, store) -> np.ndarray:
    """Store indices no given checkpoint trained on: the intersection of their runs' validation splits.

    Each split is rebuilt from the checkpoint's TrainConfig (seed, val_frac, val_ids) exactly as `train`
    drew it, so evaluating there is honest; metrics on the training patches would flatter the model.

    Raises:
        ValueError: a checkpoint was trained on other data (or does not say), or the splits do not overlap.
    """
    from pcam_core.config import TrainConfig
    from pcam_core.train import split_train_val  # train imports this module: import at call time

    held = None
    root = Path(store.root).resolve()
    for c in _as_list(checkpoints):
        ckpt = read_checkpoint(c) if isinstance(c, (str, Path)) else c[1]
        data = ckpt.get("config", {}).get("data")
        if not data or Path(data).expanduser().resolve() != root:
            name = c if isinstance(c, (str, Path)) else ckpt.get("model_name")
            raise ValueError(f"checkpoint {name} was trained on {data or 'unrecorded data'}, not {root}, so "
                             "its held-out patches are unknown here; choose a split instead")
        val = split_train_val(store, TrainConfig.from_dict(ckpt["config"]))[1]
        held = val if held is None else np.intersect1d(held, val)
    if not len(held):
        raise ValueError("the checkpoints' validation splits share no patch; evaluate them one at a time")
    return held


def _cache_key(checkpoints, store, split: str, tta: int, precision: str) -> str:
    files = []
    for c in _as_list(checkpoints):
        if not isinstance(c, (str, Path)):
            raise ValueError("predictions_table caches by checkpoint file: give paths, not loaded models")
        f = checkpoint_file(c)
        st = f.stat()
        files.append([str(f.resolve()), st.st_mtime_ns, st.st_size])
    key = json.dumps({"checkpoints": files, "data": store.fingerprint, "split": split, "tta": tta,
                      "precision": precision})
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def predictions_table(checkpoints, store, split: str, tta: int = 1, device: str = "auto",
                      batch_size: int | None = None, precision: str = "auto",
                      progress: Progress | None = None) -> pd.DataFrame:
    """Predictions for one split as a table, read from the on-disk cache when already computed.

    The cache (store.cache_dir/predictions) is keyed by each checkpoint file's path, mtime and size, the
    data fingerprint, the split, `tta` and the precision used (bf16 or fp32, whatever the device); a
    retrained checkpoint or changed data predicts afresh. Under torchrun each rank predicts its shard on
    its own device, every rank gets the whole table back, and rank 0 alone writes the cache.

    Args:
        split: "train", "valid", "test", or "holdout" (the patches the checkpoints' training runs held out
            for validation, see `holdout_indices`).

    Returns:
        DataFrame with columns id, index (store index), prob, spread, label (-1 where unknown).
    """
    _view_indices(tta)
    _check_batch_size(batch_size)  # before the cache: a bad option fails even when nothing is predicted
    indices = holdout_indices(checkpoints, store) if split == "holdout" else store.split_indices(split)
    dtype = autocast_dtype(precision, resolve_device(device))
    key = _cache_key(checkpoints, store, split, tta, "bf16" if dtype is not None else "fp32")
    path = Path(store.cache_dir) / "predictions" / f"{split}-tta{tta}-{key}.parquet"
    if path.is_file():
        log.debug("predictions from cache %s", path)
        return pd.read_parquet(path)
    ctx = Distributed(device)  # under torchrun each rank predicts every world-th patch on its own device
    result = predict(checkpoints, store, ctx.shard(indices), tta=tta, device=ctx.device,
                     batch_size=batch_size, precision=precision, progress=progress)
    result = {k: ctx.unshard([part[k] for part in ctx.gather(result)]) for k in ("prob", "spread")}
    table = pd.DataFrame({"id": store.ids[indices], "index": indices, "prob": result["prob"],
                          "spread": result["spread"], "label": store.labels[indices]})
    if not ctx.main:
        return table
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache predictions in %s: %s", path.parent, e)
    return table

