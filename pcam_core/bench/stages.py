"""`python -m pcam_core bench`: speed of each stage beside the reference notebook's pipeline shape.

Each section is a function `bench_<name>(store, device) -> list[dict]` whose rows carry
`what`, `value`, `unit` and an optional `baseline` row in the same run; `run_bench` prints them as a
Markdown table ready for BENCHMARKS.md, headed by the machine it ran on.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcam_core.bench.baselines import pil_loader, pil_predict, tile_kaggle
from pcam_core.bench.contention import bench_contention
from pcam_core.bench.embed import bench_embed
from pcam_core.bench.labels import bench_label_noise
from pcam_core.bench.notebook import bench_notebook
from pcam_core.bench.slides import bench_slides
from pcam_core.bench.store import bench_store
from pcam_core.bench.viewer import bench_viewer
from pcam_core.hardware import cpu_model

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


# the instruction sets that decide which CPU path is fastest (bf16 autocast, oneDNN kernels)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def machine() -> str:
    """The CPU as a benchmark row must name it: model name, family/model (virtual machines often show a
    bare "AMD EPYC"), cores and the ISA flags that matter here; and the GPU when there is one."""
    cpu, flags = cpu_model()
    isa = "/".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    text = f"{cpu}, {os.cpu_count()} cores, {isa}"
    # nvidia-smi rather than torch: importing torch here would make the data section's pack start its
    # workers the slow, thread-safe way (see pack.pool_context) and measure that instead.
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpus = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split("\n")[0].strip()
        if gpus:
            text += f", GPU {gpus}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return text


@section("data")
def bench_data(data_dir: Path, device: str) -> list[dict]:
    """Packing rate and random batch reads, beside one PIL.Image.open per patch (the notebook's generator)."""
    from PIL import Image

    from pcam_core.data.readers import dataset_files, open_dataset, pack

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


@section("train")
def bench_train(data_dir: Path, device: str) -> list[dict]:
    """Training img/s for base_cnn and efficientnet_lite0: uint8 store batches augmented whole on the device
    (fp32 and bf16 autocast), beside a DataLoader doing one PIL decode and augmentation per image (the
    notebook's pipeline shape) feeding the same architecture in plain fp32. The three run interleaved in
    short windows and each reports its median window, so load from other processes hits all alike."""
    import torch

    from pcam_core.data.readers import open_dataset
    from pcam_core.models.calibrate import choose
    from pcam_core.models.registry import create_model, normalization_for, resolve_device

    dev = resolve_device(device)
    store = open_dataset(data_dir)
    train = store.split_indices("train")
    train = train[store.labels[train] >= 0]
    files = [Path(data_dir) / "train" / f"{i}.tif" for i in store.ids[train]]
    rows = []
    for name in ("base_cnn", "efficientnet_lite0"):
        batch, steps = (512 if dev.type == "cuda" else 64), {}  # 64: the notebook's batch, best on 2 cores
        baseline = "DataLoader, PIL decode + augment per image, fp32"
        norm = normalization_for(create_model(name))
        default = choose(name, 96, "train", dev, batch_size=batch, channels_last=True).dtype
        if store.layout == "kaggle":
            steps[baseline] = train_step(
                name, dev, pil_loader(files, store.labels[train], norm, batch), amp=None, channels_last=False)
        for amp in (None, torch.bfloat16):
            kind = "bf16 autocast" if amp else "fp32"
            steps[f"store batches, batched augmentation on {dev.type}, channels_last, {kind}"
                  + (" (fit's calibrated choice)" if amp == default else "")] = train_step(
                name, dev, store_batches(store, train, norm, batch, dev), amp=amp, channels_last=True)
        rounds, window_s = (3, 1.0) if dev.type == "cuda" else (5, 2.0)  # a GPU's rate is steady
        rates = interleaved_rates(steps, rounds, window_s)
        for what, value in rates.items():
            rows.append({"what": f"{name}: {what}, batch {batch}", "value": value, "unit": "img/s",
                         "vs": rates.get(baseline) if what != baseline else None})
    return rows


def interleaved_rates(steps: dict[str, Callable[[], int]], rounds: int = 5, window_s: float = 2.0) -> dict:
    """Median items/s of each step function over `rounds` windows taken in turn, after a warm-up call."""
    for step in steps.values():
        step()
    windows = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            windows[name].append(rate(step, window_s))
    return {name: float(np.median(w)) for name, w in windows.items()}


def train_step(name: str, device, batches, amp, channels_last: bool) -> Callable[[], int]:
    """One AdamW step of a fresh `name` on the next (inputs, labels) of `batches`; returns the batch size."""
    import torch
    import torch.nn.functional as F

    from pcam_core.models.registry import create_model

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(name).to(device, memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> int:
        x, y = next(batches)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x.to(device).contiguous(memory_format=fmt)).float().reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(y)

    return step


def store_batches(store, indices: np.ndarray, normalization: dict, batch: int, device):
    """Endless (inputs, labels) batches the way `train.fit` makes them."""
    import torch

    from pcam_core.data.transforms import augment_batch

    rng = np.random.default_rng(0)
    gen = torch.Generator(device=device).manual_seed(0)
    labels = torch.from_numpy(store.labels.astype(np.float32))
    while True:
        pick = np.sort(rng.choice(indices, batch, replace=False))
        x = torch.from_numpy(store.batch(pick)).to(device)  # (B, 96, 96, 3) uint8
        yield augment_batch(x, normalization, 96, 0.05, gen), labels[pick].to(device)


@section("infer")
def bench_infer(data_dir: Path, device: str) -> list[dict]:
    """Prediction patches/s for base_cnn and efficientnet_lite0 (TTA 1 and 8) from store batches, beside a
    DataLoader doing one PIL decode per image into the same model in plain fp32 (the notebook's predict
    shape); then a Kaggle-size test set (57,458 patches tiled from the data) through `submit`, end to end."""
    import copy
    import subprocess
    import sys
    from functools import partial

    import torch

    from pcam_core.data.readers import dataset_files, open_dataset
    from pcam_core.inference.infer import predict
    from pcam_core.models.registry import Classifier, resolve_device

    dev = resolve_device(device)
    store = open_dataset(data_dir)
    indices = np.arange(min(len(store), 32768 if dev.type == "cuda" else 2048))  # a GPU needs big batches
    files = dataset_files(data_dir)[:4096] if store.layout != "pcam" else []
    window = 2.0 if dev.type == "cuda" else 5.0  # seconds per measurement; a GPU's rate is steady
    rows = []
    for name in ("base_cnn", "efficientnet_lite0"):
        torch.manual_seed(0)
        classifier = Classifier.new(name)
        norm = classifier.normalization
        base = None
        if files:
            baseline = copy.deepcopy(classifier.module).eval()
            base = rate(partial(pil_predict, baseline, files, norm, dev), window)
            rows.append({"what": f"{name}: DataLoader, PIL decode per image, fp32, TTA 1", "value": base,
                         "unit": "patches/s"})
        for tta, precision in ((1, "fp32"), (1, "auto"), (8, "auto")):
            run = partial(predict, [classifier], store, indices[: len(indices) // tta],
                          tta=tta, device=device, precision=precision)
            run()  # warm-up: oneDNN picks its kernels on the first call
            value = rate(lambda run=run: len(run()["prob"]), window)
            rows.append({"what": f"{name}: infer.predict from store batches, {precision} precision, "
                                 f"TTA {tta}", "value": value, "unit": "patches/s", "vs": base})
    if store.layout == "kaggle":
        # on a GPU also the Kaggle target: efficientnet with 8-view TTA over the whole test set
        runs = [("base_cnn", 1)] + ([("efficientnet_lite0", 8)] if dev.type == "cuda" else [])
        with tempfile.TemporaryDirectory() as tmp:
            tiled = tile_kaggle(data_dir, Path(tmp) / "kaggle", n_train=0, n_test=57_458)
            for name, tta in runs:
                ckpt = Classifier.new(name).save(Path(tmp) / f"{name}.pt")
                out = Path(tmp) / "submission.csv"
                command = [sys.executable, "-m", "pcam_core", "submit", "--checkpoint", str(ckpt),
                           "--data", str(tiled), "--device", device, "--tta", str(tta), "--out", str(out)]
                start = time.perf_counter()
                done = subprocess.run(command, env={**os.environ, "PCAM_CACHE_DIR": tmp}, capture_output=True,
                                      text=True)
                if done.returncode:
                    raise RuntimeError(f"submit failed: {done.stderr.strip().splitlines()[-1:]}")
                rows.append({"what": f"submit on 57,458 tiled test patches (pack + predict {name} TTA {tta}"
                                     " + write + validate), wall time", "value": time.perf_counter() - start,
                             "unit": "s"})
    return rows


@section("cam")
def bench_cam(data_dir: Path, device: str) -> list[dict]:
    """CAM patches/s per method for base_cnn and efficientnet_lite0 at their default layers."""
    from functools import partial

    import torch

    from pcam_core.data.readers import open_dataset
    from pcam_core.inference import cam
    from pcam_core.models.registry import Classifier, resolve_device

    dev = resolve_device(device)
    store = open_dataset(data_dir)
    images = store.batch(np.arange(min(len(store), 64)))
    rows = []
    for name in ("base_cnn", "efficientnet_lite0"):
        torch.manual_seed(0)
        classifier = Classifier.new(name)
        classifier.module.to(dev).eval()
        for method in cam.METHODS:
            some = images[:4] if method == "scorecam" else images
            run = partial(cam.compute_cams, classifier, some, method=method)
            run()  # warm-up
            value = rate(lambda run=run: len(run()), 3.0)
            rows.append({"what": f"{name}: {method}", "value": value, "unit": "patches/s"})
    return rows


# the models whose CAMs are measured per layer: base_cnn as the notebook trains it, lite0 fine-tuned from
# its offline ImageNet weights, each briefly on the demo set
CAM_MODELS = {"base_cnn": dict(epochs=3), "efficientnet_lite0": dict(epochs=2, pretrained=True)}


@section("cam-layers")
def bench_cam_layers(data_dir: Path, device: str) -> list[dict]:
    """Where the CAMs of every offered layer look, on data with tumour masks (the demo set): base_cnn and
    efficientnet_lite0 trained on it, their maps on the held-out tumour patches, beside a uniform map.
    The numbers behind each architecture's default layer (`models.cam_target_layer`)."""
    from pcam_core import runs
    from pcam_core.data.readers import open_dataset
    from pcam_core.data.splits import holdout_indices
    from pcam_core.inference import cam
    from pcam_core.models.registry import load
    from pcam_core.runs.config import TrainConfig
    from pcam_core.training.train import fit

    store = open_dataset(data_dir)
    if store.masks([0]) is None:
        print("cam-layers: skipped, the data has no tumour masks (use the demo set)")
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in CAM_MODELS.items():
            out = Path(tmp) / name
            config = TrainConfig(data=str(data_dir), model=name, out=str(out), device=device, **settings)
            for _ in fit(config):
                pass
            held = holdout_indices([out], store)
            tumour = held[store.labels[held] == 1]
            masks, images = store.masks(tumour), store.batch(tumour)
            classifier = load(out, device=device)
            auc = float(runs.metrics(out)["val_auc"].max())
            for layer in cam.cam_layers(classifier.module, classifier.crop):
                for method in ("gradcam", "layercam", "eigencam"):
                    maps = cam.compute_cams(classifier, images, method=method, layer=layer.name)
                    scores = cam.localisation(maps, masks)
                    uniform = float(np.nanmean(scores["uniform_share"]))
                    empty = float(np.mean(~(maps.reshape(len(maps), -1).max(axis=1) > 0)))
                    what = (f"{name} (val AUC {auc:.3f}), {layer.label} ({layer.name}), {method}, "
                            f"{len(tumour)} held-out tumour patches:")
                    rows += [
                        {"what": f"{what} CAM mass in the centre 32x32 (uniform map: 1/9)",
                         "value": float(np.nanmean(cam.centre_focus(maps))), "unit": "share", "vs": 1 / 9},
                        {"what": f"{what} CAM mass on tumour pixels (uniform map: {uniform:.3f})",
                         "value": float(np.nanmean(scores["tumour_share"])), "unit": "share", "vs": uniform},
                        {"what": f"{what} pointing game, CAM maximum on tumour (uniform map: {uniform:.3f})",
                         "value": float(np.nanmean(scores["pointing_hit"])), "unit": "hit rate",
                         "vs": uniform},
                        {"what": f"{what} empty maps", "value": empty, "unit": "share"},
                    ]
    return rows


SECTIONS["slides"] = bench_slides
SECTIONS["label-noise"] = bench_label_noise
SECTIONS["embed"] = bench_embed
SECTIONS["contention"] = bench_contention
SECTIONS["notebook"] = bench_notebook
SECTIONS["viewer"] = bench_viewer
SECTIONS["store"] = bench_store


def run_bench(data_dir: Path | None, device: str = "auto", only: list[str] | None = None) -> list[dict]:
    names = only or list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {sorted(SECTIONS)}")
    with tempfile.TemporaryDirectory() as tmp:
        if data_dir is None:
            from pcam_core.data.demo import make_demo

            data_dir = Path(tmp) / "demo"
            make_demo(data_dir, n_train=2000, n_test=200, seed=0)
        print(f"machine: {machine()}\ndata: {data_dir}\n")
        print("| section | measurement | value | unit | vs baseline |\n|---|---|---|---|---|")
        rows = []
        for name in names:
            for row in SECTIONS[name](Path(data_dir), device):
                vs = f"{row['value'] / row['vs']:.1f}x" if row.get("vs") else ""
                value = f"{row['value']:.3f}" if abs(row["value"]) < 10 else f"{row['value']:,.1f}"
                print(f"| {name} | {row['what']} | {value} | {row['unit']} | {vs} |", flush=True)
                rows.append({"section": name, **row})
    return rows
