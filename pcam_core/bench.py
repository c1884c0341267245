"""`python -m pcam_core bench`: speed of each stage beside the reference notebook's pipeline shape.

Each section is a function `bench_<name>(store, device) -> list[dict]` whose rows carry
`what`, `value`, `unit` and an optional `baseline` row in the same run; `run_bench` prints them as a
Markdown table ready for BENCHMARKS.md, headed by the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SECTIONS: dict[str, Callable] = {}


def section(name: str):
    def register(fn):
        SECTIONS[name] = fn
        return fn
    return register


def rate(fn: Callable[[], int], min_seconds: float = 1.0) -> float:
    """Calls `fn` (which returns the number of items it processed) until `min_seconds` pass; items/s."""
    n, start = 0, time.perf_counter()
    while True:
        n += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def tile_kaggle(src, out, n_train: int = 220_025, n_test: int = 57_458) -> Path:
    """A Kaggle-layout folder of the competition's size made of symlinks to `src`'s patches, repeated.

    Benchmarks use it to measure at full scale from the small real sample; each copy of a patch gets
    its own id (`<id>_<k>`), so the store sees n_train + n_test distinct patches.
    """
    import pandas as pd

    src, out = Path(src).resolve(), Path(out)
    labels = pd.read_csv(src / "train_labels.csv", dtype={"id": str})
    test_ids = sorted(p.stem for p in (src / "test").glob("*.tif")) or list(labels["id"])
    test_src = "test" if (src / "test").is_dir() and any((src / "test").glob("*.tif")) else "train"
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    rows = []
    for i in range(n_train):
        pid, label = labels["id"][i % len(labels)], labels["label"][i % len(labels)]
        new = f"{pid}_{i // len(labels)}"
        (out / "train" / f"{new}.tif").symlink_to(src / "train" / f"{pid}.tif")
        rows.append((new, label))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(out / "train_labels.csv", index=False)
    new_test = []
    for i in range(n_test):
        pid = test_ids[i % len(test_ids)]
        new_test.append(f"{pid}_{i // len(test_ids)}")
        (out / "test" / f"{new_test[-1]}.tif").symlink_to(src / test_src / f"{pid}.tif")
    pd.DataFrame({"id": new_test, "label": 0}).to_csv(out / "sample_submission.csv", index=False)
    return out


@section("data")
def bench_data(data_dir: Path, device: str) -> list[dict]:
    """Packing rate and random batch reads, beside one PIL.Image.open per patch (the notebook's generator)."""
    from PIL import Image

    from pcam_core.data import dataset_files, open_dataset, pack

    files = dataset_files(data_dir)
    rng = np.random.default_rng(0)
    sample = [files[i] for i in rng.permutation(len(files))[:2000]]

    def naive() -> int:
        for f in sample:
            np.asarray(Image.open(f).convert("RGB"))
        return len(sample)

    naive_rate = rate(naive, 2.0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PCAM_CACHE_DIR"] = tmp
        try:
            start = time.perf_counter()
            info = pack(data_dir, force=True)
            pack_rate = info["n"] / (time.perf_counter() - start)
            store = open_dataset(data_dir)
            n = len(store)
            batches = [np.sort(rng.choice(n, 256, replace=False)) for _ in range(200)]
            store.batch(batches[0])
            start = time.perf_counter()
            for b in batches:
                store.batch(b)
            batch_ms = (time.perf_counter() - start) / len(batches) * 1000
            start = time.perf_counter()
            open_dataset(data_dir)
            open_ms = (time.perf_counter() - start) * 1000
        finally:
            del os.environ["PCAM_CACHE_DIR"]
    return [
        {"what": "naive read: PIL.Image.open per patch, 1 process", "value": naive_rate, "unit": "patches/s"},
        {"what": f"pack: parallel decode into the uint8 cache ({info['n']} patches)", "value": pack_rate,
         "unit": "patches/s", "vs": naive_rate},
        {"what": "random batch of 256 from the store", "value": batch_ms, "unit": "ms"},
        {"what": "open a packed dataset", "value": open_ms, "unit": "ms"},
    ]


def run_bench(data_dir: Path | None, device: str = "auto", only: list[str] | None = None) -> list[dict]:
    names = only or list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {sorted(SECTIONS)}")
    with tempfile.TemporaryDirectory() as tmp:
        if data_dir is None:
            from pcam_core.demo import make_demo

            data_dir = Path(tmp) / "demo"
            make_demo(data_dir, n_train=2000, n_test=200, seed=0)
        print(f"machine: {machine()}\ndata: {data_dir}\n")
        print("| section | measurement | value | unit | vs baseline |\n|---|---|---|---|---|")
        rows = []
        for name in names:
            for row in SECTIONS[name](Path(data_dir), device):
                vs = f"{row['value'] / row['vs']:.1f}x" if row.get("vs") else ""
                print(f"| {name} | {row['what']} | {row['value']:,.1f} | {row['unit']} | {vs} |", flush=True)
                rows.append({"section": name, **row})
    return rows
