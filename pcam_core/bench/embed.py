"""`bench --only embed`: embeddings, the 2-D map and the duplicate search at 60,000 patches.

A fresh 60,000-patch demo set (distinct patches: a tiled sample would repeat each patch and make the
map and the duplicate search easy), packed first. The models are untrained base_cnn and ImageNet-initial
efficientnet_lite0: the speed of a pass does not depend on the weights.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

N_PATCHES = 60_000


def bench_embed(data_dir: Path, device: str) -> list[dict]:
    from pcam_core.data.demo import make_demo
    from pcam_core.data.readers import open_dataset
    from pcam_core.inference import duplicates, embed
    from pcam_core.models.registry import Classifier, load

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        make_demo(data, n_train=N_PATCHES, n_test=0, seed=11)
        store = open_dataset(data)
        indices = store.split_indices("train")
        for name, pretrained in (("base_cnn", False), ("efficientnet_lite0", True)):
            path = Classifier.new(name, pretrained=pretrained).save(Path(tmp) / f"{name}.pt")
            start = time.perf_counter()
            features, _ = embed.model_features(load(path), store, indices, device=device)
            seconds = time.perf_counter() - start
            rows.append({"what": f"embeddings of {len(indices):,} patches, {name} ({features.shape[1]} wide)",
                         "value": seconds, "unit": "s"})
            if name == "base_cnn":
                model_features = features
        start = time.perf_counter()
        stats = embed.stats_features(store, indices)
        rows.append({"what": f"colour and texture statistics of {len(indices):,} patches (no model)",
                     "value": time.perf_counter() - start, "unit": "s"})
        for what, features in (("base_cnn embeddings", model_features), ("statistics", stats)):
            start = time.perf_counter()
            xy = embed.map_2d(features)
            assert np.isfinite(xy).all()
            rows.append({"what": f"2-D map of {len(indices):,} patches from {what} (UMAP fit on "
                                 f"{embed.FIT_MAX:,}, numba compile included)",
                         "value": time.perf_counter() - start, "unit": "s"})
        start = time.perf_counter()
        pairs = duplicates.find_duplicates(store)
        rows.append({"what": f"duplicate search over {len(store):,} patches ({len(pairs)} pairs found)",
                     "value": time.perf_counter() - start, "unit": "s"})
    return rows
