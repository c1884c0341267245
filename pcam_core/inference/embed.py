"""Per-patch embeddings and the 2-D map of a split: the dataset seen as a whole.

An embedding is what the model's classifier layer reads: the pooled features of an EfficientNet, the dense
layer of base_cnn. They come from the same batched pass as the predictions (`infer.predict_rows`: reader
thread, channels_last, autocast), so one pass gives both. Without a model, a patch is described by colour
and texture statistics, enough to map a fresh dataset before any training.

The 2-D map is UMAP (umap-learn) after PCA to 50 dimensions, seeded. Above `FIT_MAX` patches UMAP is fitted
on a seeded subsample and the rest are placed among their nearest fitted neighbours: fitting on
everything costs minutes more and moves no cluster. Embeddings and maps are cached under the store's
cache folder, keyed like predictions by the checkpoint file and the data, so a map of 220,025 patches is
computed once.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pcam_core.atomic import write_cache

if TYPE_CHECKING:  # for the annotations only: torch is imported when a model is used
    from torch import nn

Progress = Callable[[int, int], None]
FIT_MAX = 20_000  # patches UMAP is fitted on; the rest are placed among their nearest neighbours
PCA_DIMS = 50
MAP_ARRAYS = ("index", "xy", "source")  # what a map's cache file holds (and prob, from a model)
MAP_VERSION = 2  # bump when `map_2d` changes, so cached maps are made again
STATS_VERSION = 1  # bump when `stats_features` changes, so cached maps are recomputed
STATS_FEATURES = ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "brightness", "saturation",
                  "tissue_frac", "centre_r", "centre_g", "centre_b", "centre_std", "edges", "centre_edges"]


@dataclass
class Embeddings:
    """Embeddings of some patches of a store.

    Attributes:
        index: (N,) store indices.
        features: (N, D) float32.
        prob: (N,) P(tumour) from the same pass, or None for the model-free statistics.
        source: what they come from, for people: "base_cnn (run tiny, crop 96)" or "colour and texture".
        key: a short hash of what makes them current (checkpoint and data), for caches derived from them.
        statistics: True for the model-free colour and texture statistics (features in unlike units).
    """

    index: np.ndarray
    features: np.ndarray
    prob: np.ndarray | None
    source: str
    key: str
    statistics: bool


def feature_layer(module) -> nn.Linear:
    """The layer whose input is the embedding: the last Linear of the classifier head.

    Raises:
        ValueError: the model's head has no Linear layer (nothing pooled to embed).
    """
    from torch import nn

    head = module.get_classifier() if hasattr(module, "get_classifier") else module
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no linear classifier on pooled features, so it gives "
                         f"no embedding; map this dataset without a model (colour and texture) instead")
    return linears[-1]


def model_features(classifier, store, indices: np.ndarray, device: str = "auto",
                   batch_size: int | None = None, precision: str = "auto",
                   progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, prob (N,) float32) of the store's `indices`, in one inference pass."""
    from pcam_core.inference.infer import predict_rows

    parts: list[np.ndarray] = []

    def keep(_module, args) -> None:
        x = args[0]
        if x.ndim != 2:
            raise ValueError(f"the classifier of {classifier.name} reads a {tuple(x.shape)} tensor, not "
                             f"pooled features; map this dataset without a model instead")
        parts.append(x.float().cpu().numpy())

    hook = feature_layer(classifier.module).register_forward_pre_hook(keep)
    try:
        out = predict_rows([classifier], lambda start, stop: store.batch(indices[start:stop]), len(indices),
                           1, device, batch_size, precision, progress)
    finally:
        hook.remove()
    width = parts[0].shape[1] if parts else 0
    return (np.concatenate(parts) if parts else np.zeros((0, width), np.float32)), out["prob"]


def _edges(grey: np.ndarray) -> np.ndarray:
    """(B,) mean absolute difference between vertical neighbours plus that between horizontal ones."""
    return np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))


def stats_features(store, indices: np.ndarray, progress: Progress | None = None, chunk: int = 4096
                   ) -> np.ndarray:
    """Colour and texture statistics of the store's `indices` -> (N, 15) float32 in STATS_FEATURES order.

    The pack's per-patch statistics (mean and std per channel, brightness, saturation, tissue share), the
    centre 32x32's mean colour and spread, and edge energy (mean absolute grey difference between
    neighbouring pixels) over the patch and over its centre. None depends on the patch's orientation.
    """
    from pcam_core.data.pack import patch_stats

    out = np.empty((len(indices), len(STATS_FEATURES)), np.float32)
    for start in range(0, len(indices), chunk):
        x = store.batch(indices[start:start + chunk])  # (B, 96, 96, 3) uint8
        f = x.astype(np.float32)
        centre = f[:, 32:64, 32:64]
        grey = f @ np.float32([0.299, 0.587, 0.114])  # (B, 96, 96)
        out[start:start + len(x)] = np.column_stack([
            patch_stats(x, step=1), centre.mean((1, 2)), grey[:, 32:64, 32:64].std((1, 2)), _edges(grey),
            _edges(grey[:, 32:64, 32:64])])
        if progress is not None:
            progress(start + len(x), len(indices))
    return out


def _cache_folder(store) -> Path:
    return Path(store.cache_dir) / "embeddings"


def _read_npz(path: Path, needs: tuple[str, ...]) -> dict | None:
    """The arrays of a cache file, or None when it is missing, damaged or lacks one of `needs`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            found = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: compute afresh
        return None
    return found if all(k in found for k in needs) else None


def _write_npz(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez(f, **arrays)

    write_cache(path, write)


def split_indices(store, split: str, checkpoint: str | Path | None = None) -> np.ndarray:
    """The store indices of `split` ("holdout": the patches `checkpoint`'s run held out)."""
    if checkpoint is None:
        if split == "holdout":
            raise ValueError("split holdout needs a checkpoint: its run's held-out patches")
        return store.split_indices(split)
    from pcam_core.inference.infer import split_indices as indices_of

    return indices_of([str(checkpoint)], store, split)


def _embedding_file(store, split: str, checkpoint: str | Path | None, device: str, precision: str
                    ) -> tuple[Path, str]:
    """Where the split's embeddings are cached, and their key (a hash of checkpoint, data and split)."""
    if checkpoint is None:
        import hashlib

        key = hashlib.sha1(f"stats-{STATS_VERSION}-{store.fingerprint}-{split}".encode()).hexdigest()[:20]
        return _cache_folder(store) / f"{split}-stats-{key}.npz", key
    from pcam_core.inference import infer

    key = infer.cache_key([checkpoint], store, split, 1, infer.precision_used(precision, device))
    return _cache_folder(store) / f"{split}-model-{key}.npz", key


def embeddings(store, split: str, checkpoint: str | Path | None = None, device: str = "auto",
               batch_size: int | None = None, precision: str = "auto",
               progress: Progress | None = None) -> Embeddings:
    """The embeddings of one split, read from the cache when already computed.

    Args:
        checkpoint: a run folder or .pt file; None for the model-free colour and texture statistics.
        split: "train", "valid", "test" or "holdout".
        progress: called as progress(done, total) while patches are read (and scored).
    """
    path, key = _embedding_file(store, split, checkpoint, device, precision)
    cached = _read_npz(path, ("index", "features", "source"))
    if cached is None:
        indices = split_indices(store, split, checkpoint)
        if checkpoint is None:
            cached = {"index": indices, "features": stats_features(store, indices, progress),
                      "source": np.array("colour and texture statistics")}
        else:
            from pcam_core.models.registry import load
            from pcam_core.runs.folder import run_folder_of

            classifier = load(checkpoint)
            features, prob = model_features(classifier, store, indices, device, batch_size, precision,
                                            progress)
            # float16 on disk halves a 220k x 1280 cache; the map and the neighbours do not see the difference
            cached = {"index": indices, "features": features.astype(np.float16), "prob": prob,
                      "source": np.array(f"{classifier.name} (run {run_folder_of(checkpoint).name}, "
                                         f"crop {classifier.crop})")}
        _write_npz(path, **cached)
    return Embeddings(cached["index"], cached["features"].astype(np.float32), cached.get("prob"),
                      str(cached["source"]), key, checkpoint is None)


def map_2d(features: np.ndarray, seed: int = 0, fit_max: int = FIT_MAX,
           progress: Progress | None = None) -> np.ndarray:
    """A 2-D UMAP map of `features` -> (N, 2) float32, the same for the same features and seed.

    Features are standardised and reduced by PCA to PCA_DIMS (the neighbour search is then cheap). UMAP runs
    on at most `fit_max` rows (a seeded subsample) with PCA initialisation and exact neighbours from
    scikit-learn: pynndescent's approximate search spends some 50 s compiling in every new process and
    gains nothing at this size. Each row left out is placed at the distance-weighted mean of its 15
    nearest fitted rows.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsRegressor, NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    n = len(features)
    if progress is not None:
        progress(0, n)
    features = np.asarray(features, np.float32)
    distinct, inverse = np.unique(features, axis=0, return_inverse=True)
    if len(distinct) < n:  # identical rows (blank glass, copies): one place each, UMAP sees each once
        out = map_2d(distinct, seed, fit_max)[inverse.ravel()]
        if progress is not None:
            progress(n, n)
        return out
    if n < 4:  # too few points for a neighbour graph: a line is the honest map
        return np.column_stack([np.arange(n), np.zeros(n)]).astype(np.float32)
    x = StandardScaler().fit_transform(np.asarray(features, np.float32))
    if x.shape[1] > PCA_DIMS and n > PCA_DIMS:
        x = PCA(PCA_DIMS, random_state=seed).fit_transform(x)
    x = x.astype(np.float32)
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(n, fit_max, replace=False)) if n > fit_max else np.arange(n)
    k = min(15, len(fit) - 1)
    dist, nearest = NearestNeighbors(n_neighbors=k).fit(x[fit]).kneighbors(x[fit])  # itself first, as UMAP's
    import umap  # numba compiles its layout on first use: imported only when a map is made

    reducer = umap.UMAP(n_neighbors=k, min_dist=0.1, init="pca", random_state=seed,
                        precomputed_knn=(nearest, dist, None))
    # "n_jobs value 1 overridden to 1 by setting random_state": the seed is the point; "transform will be
    # unavailable": rows left out are placed below instead (filters, not catch_warnings, which is not
    # thread-safe: the app calls this from a thread)
    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
    out = np.empty((n, 2), np.float32)
    out[fit] = reducer.fit_transform(x[fit])
    if progress is not None:
        progress(len(fit), n)
    rest = np.setdiff1d(np.arange(n), fit)
    if len(rest):
        place = KNeighborsRegressor(n_neighbors=k, weights="distance").fit(x[fit], out[fit])
        for start in range(0, len(rest), 20_000):
            part = rest[start:start + 20_000]
            out[part] = place.predict(x[part])
            if progress is not None:
                progress(len(fit) + start + len(part), n)
    return out


def _map_file(store, split: str, key: str, seed: int) -> Path:
    return _cache_folder(store) / f"{split}-map{MAP_VERSION}-{key}-seed{seed}.npz"


def _as_table(store, cached: dict) -> pd.DataFrame:
    index, xy = cached["index"], cached["xy"]
    table = pd.DataFrame({"id": store.ids[index], "index": index, "label": store.labels[index],
                          "x": xy[:, 0], "y": xy[:, 1],
                          "prob": cached["prob"] if "prob" in cached else np.nan})
    table.attrs["source"] = str(cached["source"])
    return table


def preview_2d(features: np.ndarray) -> np.ndarray:
    """A quick 2-D look at `features` (the first two principal components of the standardised features):
    what a page shows while UMAP lays out the map. (N, 2) float32."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, np.float32)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    if len(x) < 3 or x.shape[1] < 2:
        return np.column_stack([np.arange(len(x)), np.zeros(len(x))]).astype(np.float32)
    return PCA(2, random_state=0).fit_transform(x).astype(np.float32)


def map_table(store, split: str, checkpoint: str | Path | None = None, device: str = "auto",
              batch_size: int | None = None, seed: int = 0,
              progress: Callable[[str, int, int], None] | None = None,
              preview: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """The map of one split: id, index, label, x, y, and prob (NaN without a model); cached on disk.

    `progress(stage, done, total)` reports the two stages, "embedding" and "map"; `preview(table)` gets the
    same table laid out by `preview_2d` as soon as the embeddings are in, before UMAP. The table's
    attrs["source"] says what the map was made from. The map's cache holds no features, so reopening a
    map of 220,025 patches reads a few MB.
    """
    def stage(name: str) -> Progress | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    _, key = _embedding_file(store, split, checkpoint, device, "auto")
    path = _map_file(store, split, key, seed)
    cached = _read_npz(path, MAP_ARRAYS)
    if cached is None:
        emb = embeddings(store, split, checkpoint, device=device, batch_size=batch_size,
                         progress=stage("embedding"))
        if preview is not None:
            first = {"index": emb.index, "xy": preview_2d(emb.features), "source": emb.source}
            preview(_as_table(store, {**first, **({"prob": emb.prob} if emb.prob is not None else {})}))
        cached = {"index": emb.index, "xy": map_2d(emb.features, seed, progress=stage("map")),
                  "source": np.array(emb.source)}
        if emb.prob is not None:
            cached["prob"] = emb.prob
        _write_npz(path, **cached)
    return _as_table(store, cached)


def cached_map(store, split: str, checkpoint: str | Path | None = None, device: str = "auto",
               seed: int = 0) -> pd.DataFrame | None:
    """`map_table`'s table when its map is on disk; else None (nothing is computed)."""
    _, key = _embedding_file(store, split, checkpoint, device, "auto")
    cached = _read_npz(_map_file(store, split, key, seed), MAP_ARRAYS)
    return None if cached is None else _as_table(store, cached)


def neighbours(features: np.ndarray, query: int, k: int = 24, standardise: bool = False) -> np.ndarray:
    """Rows of the `k` patches nearest to row `query` by cosine similarity, nearest first (not itself).

    `standardise` first scales each feature to unit spread: for statistics in unlike units (the model-free
    features), where the largest would otherwise decide alone.
    """
    x = np.asarray(features, np.float32)
    if standardise:
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = x @ x[query]
    similarity[query] = -np.inf
    k = min(k, len(x) - 1)
    top = np.argpartition(-similarity, k)[:k] if k < len(x) - 1 else np.arange(len(x))[similarity > -np.inf]
    return top[np.argsort(-similarity[top], kind="stable")]
