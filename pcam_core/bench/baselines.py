"""The baselines `bench` measures against, and the tiled full-size set it measures on.

The per-image PIL pipeline is the reference notebook's shape in PyTorch (a DataLoader decoding and
augmenting one image at a time); the notebook's own Keras pipeline is `../shared/bench/notebook_keras.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def per_image_dataset(files: list[Path], normalization: dict, labels: np.ndarray | None = None,
                      augment: bool = False):
    """The notebook's pipeline shape as a Dataset: one PIL decode (and, to train, one augmentation) per image.

    Items are a (3, 96, 96) float tensor, with its float label when `labels` is given.
    """
    import torch
    from PIL import Image

    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
    flips = (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE)

    class PerImage(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            img = Image.open(files[i]).convert("RGB")
            gain = 1.0
            if augment:
                for op in flips:
                    if np.random.rand() < 0.5:
                        img = img.transpose(op)
                gain = np.random.uniform(0.95, 1.05, 3)
            x = (np.asarray(img, np.float32) / 255 * gain - mean) / std
            x = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))
            return x if labels is None else (x, np.float32(labels[i]))

    return PerImage()


def pil_loader(files: list[Path], labels: np.ndarray, normalization: dict, batch: int):
    """The notebook's training pipeline: a DataLoader (1 worker) over `per_image_dataset`, augmenting."""
    import torch

    loader = torch.utils.data.DataLoader(per_image_dataset(files, normalization, labels, augment=True),
                                         batch_size=batch, shuffle=True, num_workers=1,
                                         drop_last=True, persistent_workers=True)
    while True:
        yield from loader


def pil_predict(model, files: list[Path], normalization: dict, device, batch: int = 64) -> int:
    """One pass of the notebook's predict shape: a DataLoader (1 worker) decoding one image at a time."""
    import torch

    model = model.to(device)
    with torch.inference_mode():
        for x in torch.utils.data.DataLoader(per_image_dataset(files, normalization), batch_size=batch,
                                             num_workers=1):
            torch.sigmoid(model(x.to(device))).cpu()
    return len(files)
