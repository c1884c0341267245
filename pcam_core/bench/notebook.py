"""`bench --only notebook`: PCam Review's whole commands beside the reference notebook's own Keras pipeline,
in the same run, on the same data.

The notebook (`scripts/notebook_keras.py`) needs TensorFlow, which PCam Review does not: it runs under this
interpreter when it imports tensorflow, else under `bench --keras-python PATH` (a virtualenv made with
`pip install -r requirements-bench.txt`); without either the section says so and measures nothing.

- Calibration (`calibrate.choose`) of what the commands below ask for, timed on its own: it runs once per
  machine and model, and each command then finds it in its fresh cache.
- Training: the notebook fits its CNN for 3 whole epochs on its 75% split, images augmented one by one by
  ImageDataGenerator from the .tif files; `python -m pcam_core train --model base_cnn --epochs 3
  --val-frac 0.25` as a user runs it, timed whole (start-up, packing into a fresh cache, validation after
  every epoch, checkpoints).
- Prediction: the notebook's `model.predict` over 60,960 patches (the data tiled), decoding included;
  `python -m pcam_core predict` over the same folder, timed whole (start-up, packing the 60,960 TIFFs into a
  fresh cache, prediction, the CSV), base_cnn and efficientnet_lite0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pcam_core.bench.baselines import tile_kaggle

EPOCHS, PREDICT_PATCHES = 3, 60_960
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "notebook_keras.py"


def keras_python() -> str | None:
    """An interpreter that imports tensorflow: PCAM_KERAS_PYTHON, else this one if it can; else None."""
    for python in filter(None, [os.environ.get("PCAM_KERAS_PYTHON"), sys.executable]):
        check = subprocess.run([python, "-c", "import tensorflow"], capture_output=True)
        if check.returncode == 0:
            return python
    return None


def calibrated(folder: Path, device: str, trained: int) -> float:
    """Times the settings the commands below will ask for (`calibrate.choose`, once per machine) into
    folder/calibration.json; returns the seconds it took."""
    from pcam_core.models import calibrate
    from pcam_core.models.registry import resolve_device

    dev = resolve_device(device)
    saved = os.environ.get("PCAM_CACHE_DIR")
    os.environ["PCAM_CACHE_DIR"] = str(folder)
    try:
        start = time.perf_counter()
        calibrate.choose("base_cnn", 96, "train", dev, batch_size=64, compile=None, patches=trained)
        for name in ("base_cnn", "efficientnet_lite0"):
            calibrate.choose(name, 96, "infer", dev, compile=None, patches=PREDICT_PATCHES)
        return time.perf_counter() - start
    finally:
        if saved is None:
            del os.environ["PCAM_CACHE_DIR"]
        else:
            os.environ["PCAM_CACHE_DIR"] = saved


def _wall(command: list[str], cache: Path, calibration: Path) -> float:
    """Seconds `command` takes, run as a user would, with PCAM_CACHE_DIR at a fresh `cache` that holds only
    this machine's `calibration` (timed once per machine, not per command)."""
    cache.mkdir(parents=True)
    shutil.copy(calibration, cache / "calibration.json")
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "PCAM_CACHE_DIR": str(cache)}, capture_output=True,
                          text=True, cwd=SCRIPT.parents[1])
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return time.perf_counter() - start


def bench_notebook(data_dir: Path, device: str) -> list[dict]:
    python = keras_python()
    if python is None:
        print("notebook: no interpreter imports tensorflow; pass --keras-python (requirements-bench.txt)")
        return []
    pcam = [sys.executable, "-m", "pcam_core"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiled = tile_kaggle(data_dir, tmp / "tiled", n_train=PREDICT_PATCHES, n_test=0)
        done = subprocess.run([python, str(SCRIPT), str(data_dir), "--epochs", str(EPOCHS), "--predict-dir",
                               str(tiled)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the notebook's pipeline failed: {done.stderr.strip()[-500:]}")
        keras = json.loads(done.stdout.strip().splitlines()[-1])
        keras_fit = keras["fit_images"] / keras["fit_seconds"]
        keras_train = keras["fit_images"] / (keras["setup_seconds"] + keras["fit_seconds"])
        keras_predict = keras["predicted"] / keras["predict_seconds"]
        trained = keras["train_patches"] * EPOCHS  # 75% of the data, as the notebook's split
        setup = calibrated(tmp / "calibration", device, trained)
        calibration = tmp / "calibration" / "calibration.json"
        run = tmp / "run"
        train = [*pcam, "train", "--data", str(data_dir), "--model", "base_cnn", "--epochs", str(EPOCHS),
                 "--val-frac", "0.25", "--batch-size", "64", "--device", device, "--out", str(run)]
        seconds = _wall(train, tmp / "cache-train", calibration)
        status = json.loads((run / "status.json").read_text())
        rows += [
            {"what": f"notebook Keras (TensorFlow {keras['tensorflow']}): {EPOCHS} epochs of its CNN on "
                     f"{keras['train_patches']:,} patches, fit alone", "value": keras_fit, "unit": "img/s"},
            {"what": "notebook Keras: the same, start-up included (imports, file listing, model)",
             "value": keras_train, "unit": "img/s"},
            {"what": "calibration of the settings below, once per machine (base_cnn training; base_cnn and "
                     "efficientnet_lite0 inference, torch.compile tried where a job is long)", "value": setup,
             "unit": "s"},
            {"what": f"`train --model base_cnn --epochs {EPOCHS} --val-frac 0.25`, whole command (start-up, "
                     f"packing, validation each epoch, checkpoints): {seconds:.0f} s",
             "value": trained / seconds, "unit": "img/s", "vs": keras_train},
            {"what": f"`train`'s AUC on its held-out 25% after {EPOCHS} epochs", "unit": "AUC",
             "value": status.get("best_auc") or float("nan")},
            {"what": f"notebook Keras: model.predict over {keras['predicted']:,} patches, decoding included",
             "value": keras_predict, "unit": "patches/s"},
        ]
        for name, checkpoint in (("base_cnn", run), ("efficientnet_lite0", None)):
            if checkpoint is None:
                from pcam_core.models.registry import Classifier

                checkpoint = Classifier.new(name).save(tmp / f"{name}.pt")
            predict = [*pcam, "predict", "--checkpoint", str(checkpoint), "--data", str(tiled), "--split",
                       "train", "--device", device, "--out", str(tmp / "preds.csv")]
            seconds = _wall(predict, tmp / f"cache-{name}", calibration)
            rows.append({"what": f"`predict` {name} over the same {PREDICT_PATCHES:,} patches, whole command "
                                 f"(start-up, packing, CSV): {seconds:.0f} s",
                         "value": PREDICT_PATCHES / seconds, "unit": "patches/s", "vs": keras_predict})
    return rows
