"""Duplicate patches: the same tissue twice, within training or between training and test.

- Exact: identical pixels, also under any of the 8 flips and quarter turns. Patches are bucketed by
  values no flip or turn changes (the channel sums and the sorted corner pixels); within a bucket, a set
  of copies shares the smallest hash of its 8 transforms, and its first member is paired with each other.
- Near: the same pixels up to re-compression or slight noise. Candidates are each patch's nearest
  neighbours by an 8 x 8 colour thumbnail, under each of the 8 transforms, and, when a model is given, by
  its embedding's cosine; a candidate counts when its pixels agree to at least `NEAR_PSNR` dB under the
  best transform.

Blank patches (glass, fat: the store's `blank` flag) are in the exact search, where a hash has no false
positives, and left out of the near search: any two look alike to within noise. A set of exact copies
enters the near search once (its first member), so its copies are not reported again as near pairs.

Both are reported as pairs with the splits they join, grouped into connected sets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pcam_core.atomic import write_cache
from pcam_core.geometry import dihedral

Progress = Callable[[int, int], None]
# dB. Measured (BENCHMARKS.md "Duplicates"): JPEG quality-90 copies sit at 29.9 dB or more on the demo and
# 33.4 on the real sample; the closest distinct tissue patches at 27.1 (demo) and 23.4 (sample).
NEAR_PSNR = 28.5
CANDIDATES = 3  # nearest neighbours checked per patch and transform
SEARCH_DIMS = 16
CHUNK = 4096
PAIR_COLUMNS = ["a", "b", "a_id", "b_id", "a_split", "b_split", "kind", "transform", "psnr", "group"]
VERSION = 3  # bump when what counts as a pair changes, so cached tables are made again


def _invariants(x: np.ndarray) -> np.ndarray:
    """(B, 7) int64 values no dihedral transform changes: the three channel sums and the 4 corner pixels'
    grey sums, sorted."""
    sums = x.reshape(len(x), -1, 3).sum(1, dtype=np.int64)  # (B, 3)
    corners = x[:, [0, 0, -1, -1], [0, -1, 0, -1]].sum(-1, dtype=np.int64)  # (B, 4)
    return np.column_stack([sums, np.sort(corners, axis=1)])


def _thumbnails(x: np.ndarray) -> np.ndarray:
    """(B, 8, 8, 3) float32 block means of (B, 96, 96, 3) uint8 patches."""
    b = len(x)
    return x.reshape(b, 8, 12, 8, 12, 3).mean((2, 4), dtype=np.float32)


def _scan(store, indices: np.ndarray, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the pixels: the invariants (N, 7) and thumbnails (N, 8, 8, 3)."""
    inv = np.empty((len(indices), 7), np.int64)
    thumbs = np.empty((len(indices), 8, 8, 3), np.float32)
    for start in range(0, len(indices), CHUNK):
        x = store.batch(indices[start:start + CHUNK])  # (B, 96, 96, 3) uint8
        inv[start:start + len(x)] = _invariants(x)
        thumbs[start:start + len(x)] = _thumbnails(x)
        if progress is not None:
            progress(start + len(x), len(indices))
    return inv, thumbs


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    mse = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def best_match(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(k, PSNR) of the dihedral transform of `a` closest to `b`."""
    scores = [psnr(dihedral(a, k), b) for k in range(8)]
    k = int(np.argmax(scores))
    return k, scores[k]


def exact_pairs(store, indices: np.ndarray, invariants: np.ndarray) -> list[tuple[int, int, int]]:
    """(i, j, k) rows of `indices` whose patches are identical up to the dihedral transform k (i < j).

    Each set of identical patches comes back as pairs of its first member with each other one (m - 1
    pairs for m copies, not m(m - 1)/2): a set is told by the smallest hash of its 8 transforms.
    """
    keys = pd.DataFrame(invariants).duplicated(keep=False).to_numpy()
    if not keys.any():
        return []
    buckets = pd.DataFrame(invariants[keys]).assign(row=np.flatnonzero(keys))
    pairs = []
    for _, bucket in buckets.groupby(list(range(invariants.shape[1])), sort=False):
        rows = bucket["row"].to_numpy()
        patches = store.batch(indices[rows])
        sets: dict[bytes, list[int]] = {}
        for a, patch in enumerate(patches):
            digest = min(hashlib.blake2b(np.ascontiguousarray(dihedral(patch, k)).tobytes(),
                                         digest_size=16).digest() for k in range(8))
            sets.setdefault(digest, []).append(a)
        for first, *others in sets.values():
            views = [dihedral(patches[first], k) for k in range(8)]
            for b in others:
                k = next(k for k, v in enumerate(views) if np.array_equal(v, patches[b]))
                pairs.append((int(rows[first]), int(rows[b]), k))
    return pairs


def _neighbour_candidates(vectors: np.ndarray, queries: list[np.ndarray], k: int) -> set[tuple[int, int]]:
    """(i, j) with i != j, j among the k nearest rows of `vectors` to row i of any of `queries`.

    Searched in the first SEARCH_DIMS principal components (a projection only brings copies closer) with a
    tree, which keeps 8 queries over 220,025 patches to minutes where brute force would take hours.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    k = min(k + 1, len(vectors))
    if vectors.shape[1] > SEARCH_DIMS and len(vectors) > SEARCH_DIMS:
        pca = PCA(SEARCH_DIMS, random_state=0).fit(vectors)
        vectors, queries = pca.transform(vectors), [pca.transform(q) for q in queries]
    index = NearestNeighbors(n_neighbors=k).fit(vectors)
    found = set()
    for q in queries:
        nearest = index.kneighbors(q, return_distance=False)  # (N, k)
        rows = np.repeat(np.arange(len(q)), k)
        found.update((int(i), int(j)) for i, j in zip(rows, nearest.ravel(), strict=True) if i != j)
    return {(min(i, j), max(i, j)) for i, j in found}


def near_pairs(store, indices: np.ndarray, thumbnails: np.ndarray, embeddings: np.ndarray | None = None,
               min_psnr: float = NEAR_PSNR) -> list[tuple[int, int, int, float]]:
    """(i, j, k, PSNR) rows of `indices` (i < j) whose pixels agree to `min_psnr` dB under transform k of
    row i, among nearest-neighbour candidates."""
    n = len(indices)
    if n < 2:
        return []
    flat = thumbnails.reshape(n, -1)
    # a thumbnail's transforms are the transforms' thumbnails (12 px blocks tile the patch evenly)
    queries = [np.ascontiguousarray(dihedral(thumbnails, k)).reshape(n, -1) for k in range(8)]
    candidates = _neighbour_candidates(flat, queries, CANDIDATES)
    if embeddings is not None:
        unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        candidates |= _neighbour_candidates(unit.astype(np.float32), [unit.astype(np.float32)], CANDIDATES)
    pairs = np.array(sorted(candidates), dtype=np.int64).reshape(-1, 2)
    # Block means differ by no more than the pixels do (RMS), so a pair whose thumbnails differ by more than
    # the RMS error `min_psnr` allows cannot pass: dropped before any pixel is read.
    limit = 255.0 / 10 ** (min_psnr / 20)
    a, b = pairs[:, 0], pairs[:, 1]
    rms = np.min([np.sqrt(np.mean((q[a] - flat[b]) ** 2, axis=1)) for q in queries], axis=0)
    found = []
    for i, j in pairs[rms <= limit]:
        k, score = best_match(*store.batch(indices[[i, j]]))
        if score >= min_psnr:
            found.append((int(i), int(j), k, score))
    return found


def _groups(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """Connected-set number of each pair (patches joined by any chain of pairs share one)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs["a"], pairs["b"])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels[pairs["a"].to_numpy()]


def find_duplicates(store, checkpoint: str | Path | None = None, min_psnr: float = NEAR_PSNR,
                    progress: Progress | None = None) -> pd.DataFrame:
    """Exact pairs among all the store's patches and near pairs among its tissue (all splits together).

    Returns:
        DataFrame with PAIR_COLUMNS: store indices a < b, their ids and splits, kind "exact" or "near",
        transform (the dihedral k taking a's pixels to b's), psnr (inf for exact), group (a connected set).
    """
    everything = np.arange(len(store))
    invariants, thumbnails = _scan(store, everything, progress)
    exact = exact_pairs(store, everything, invariants)
    copy = np.zeros(len(store), bool)  # a later member of a set of exact copies
    copy[[j for _, j, _ in exact]] = True
    searched = np.flatnonzero(~store.stats["blank"].to_numpy() & ~copy)
    features = None
    if checkpoint is not None:
        from pcam_core.inference.embed import embeddings

        parts = [embeddings(store, split, checkpoint) for split in store.split_names()]
        features = np.zeros((len(store), parts[0].features.shape[1]), np.float32)
        for part in parts:
            features[part.index] = part.features
        features = features[searched]
    known = {(i, j) for i, j, _ in exact}
    near = [(searched[i], searched[j], k, score)
            for i, j, k, score in near_pairs(store, searched, thumbnails[searched], features, min_psnr)
            if (searched[i], searched[j]) not in known]
    rows = ([(i, j, "exact", k, float("inf")) for i, j, k in exact]
            + [(i, j, "near", k, score) for i, j, k, score in near])
    table = pd.DataFrame(rows, columns=["a", "b", "kind", "transform", "psnr"])
    table["a"], table["b"] = table["a"].astype(np.int64), table["b"].astype(np.int64)
    table["a_id"], table["b_id"] = store.ids[table["a"]], store.ids[table["b"]]
    table["a_split"], table["b_split"] = store.splits[table["a"]], store.splits[table["b"]]
    table["group"] = _groups(len(store), table) if len(table) else np.zeros(0, np.int64)
    return table[PAIR_COLUMNS].sort_values(["group", "a", "b"], ignore_index=True)


def _cache_path(store, checkpoint: str | Path | None, min_psnr: float) -> Path:
    parts = [store.fingerprint, str(min_psnr), str(VERSION)]
    if checkpoint is not None:
        from pcam_core.inference.infer import cache_key

        parts.append(cache_key([checkpoint], store, "all", 1, "auto"))
    key = hashlib.sha1("-".join(parts).encode()).hexdigest()[:20]
    return Path(store.cache_dir) / "duplicates" / f"pairs-{key}.parquet"


def cached_duplicates(store, checkpoint: str | Path | None = None, min_psnr: float = NEAR_PSNR
                      ) -> pd.DataFrame | None:
    """`duplicates`'s table when it is on disk; else None (nothing computed)."""
    path = _cache_path(store, checkpoint, min_psnr)
    try:
        return pd.read_parquet(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def duplicates(store, checkpoint: str | Path | None = None, min_psnr: float = NEAR_PSNR,
               progress: Progress | None = None) -> pd.DataFrame:
    """`find_duplicates`, cached under the store's cache folder by data, checkpoint and threshold."""
    if not 0 < min_psnr < 100:
        raise ValueError(f"the near-copy threshold must be between 0 and 100 dB, got {min_psnr}; JPEG copies "
                         f"at quality 90 sit above 29")
    cached = cached_duplicates(store, checkpoint, min_psnr)
    if cached is not None:
        return cached
    table = find_duplicates(store, checkpoint, min_psnr, progress)
    write_cache(_cache_path(store, checkpoint, min_psnr), lambda tmp: table.to_parquet(tmp, index=False))
    return table


def summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pair counts by kind and by the splits they join ("train-train", "train-test", ...)."""
    joined = pairs.assign(splits=[" - ".join(sorted(s)) for s in zip(pairs["a_split"], pairs["b_split"],
                                                                      strict=True)])
    return (joined.groupby(["splits", "kind"]).size().unstack("kind", fill_value=0)
            .reindex(columns=["exact", "near"], fill_value=0).reset_index())


def leaks(pairs: pd.DataFrame, held_out_ids, training_ids) -> pd.DataFrame:
    """The pairs joining a held-out patch to a training patch (its evaluation is then optimistic)."""
    held, train = set(held_out_ids), set(training_ids)
    a_held, b_held = pairs["a_id"].isin(held), pairs["b_id"].isin(held)
    a_train, b_train = pairs["a_id"].isin(train), pairs["b_id"].isin(train)
    return pairs[(a_held & b_train) | (b_held & a_train)]
