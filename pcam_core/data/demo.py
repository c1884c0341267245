"""A synthetic H&E-like dataset in the Kaggle layout, with a tumour mask per patch.

Colours come from Beer-Lambert stain mixing: each pixel's optical density is a hematoxylin amount
(nuclei, purple) times the hematoxylin vector plus an eosin amount (stroma, pink) times the eosin
vector, with both vectors jittered per patch as stains vary between labs. Normal tissue carries
small round lymphocyte-like nuclei; tumour carries clusters of larger, darker, crowded, irregular
nuclei. The mask marks tumour nuclei and the label follows PCam's rule: 1 exactly when the mask
touches the centre 32x32 region. Some tumour patches hold only the margin of a cluster beside the
centre, some normal patches carry tumour only in the outer ring, and some
are blank glass or fat.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from pcam_core.geometry import CENTRE, PATCH, dihedral

log = logging.getLogger(__name__)

HEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
EOSIN = np.array([0.07, 0.99, 0.11], np.float32)
# Share of each kind of patch; label 1 comes from "tumour" (the cluster covers the centre) and "edge" (a
# cluster beside the centre reaches into it by a few nuclei, as at a tumour's margin on a slide).
KINDS = {"tumour": 0.32, "edge": 0.08, "ring": 0.12, "normal": 0.42, "blank": 0.06}

_YY, _XX = np.mgrid[0:PATCH, 0:PATCH].astype(np.float32)


def smooth_noise(rng: np.random.Generator, cells: int, shape: tuple[int, int] = (PATCH, PATCH)) -> np.ndarray:
    """Low-frequency noise of `shape` in [0, 1]: a random grid of `cells` per side upsampled bilinearly."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    rows = _interpolate(grid, shape[0], cells)  # (h, cells+1)
    return _interpolate(rows.T, shape[1], cells).T


def _interpolate(grid: np.ndarray, n: int, cells: int) -> np.ndarray:
    """Rows of `grid` resampled linearly to `n` rows spanning the same extent."""
    pos = np.linspace(0, cells, n, dtype=np.float32)
    i = np.minimum(pos.astype(int), cells - 1)
    f = pos - i
    return grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]


def draw_nuclei(
    density: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    centres: np.ndarray,
    radius: tuple[float, float],
    darkness: tuple[float, float],
    irregular: float,
) -> None:
    """Adds elliptical nuclei at `centres` (K, 2) to `density` (H, W) in place; marks `mask` too."""
    height, width = density.shape
    for cy, cx in centres:
        r = rng.uniform(*radius)
        aspect = rng.uniform(1 - irregular, 1 + irregular)
        angle = rng.uniform(0, np.pi)
        r0 = int(np.ceil(r * max(aspect, 1 / aspect))) + 2
        y0, y1 = max(int(cy) - r0, 0), min(int(cy) + r0 + 1, height)
        x0, x1 = max(int(cx) - r0, 0), min(int(cx) + r0 + 1, width)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / (r * aspect)
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) * aspect / r
        d = u * u + v * v
        if irregular:  # lobed outline: the radius wobbles with the angle
            theta = np.arctan2(v, u)
            d = d * (1 + irregular * 0.6 * np.sin(3 * theta + rng.uniform(0, 6.3)))
        inside = d <= 1
        # Chromatin is denser at the rim of the nucleus than at its centre.
        amount = rng.uniform(*darkness) * (0.75 + 0.25 * np.clip(d, 0, 1))
        density[y0:y1, x0:x1] = np.where(
            inside, np.maximum(density[y0:y1, x0:x1], amount), density[y0:y1, x0:x1]
        )
        if mask is not None:
            mask[y0:y1, x0:x1] |= inside


def scatter(rng: np.random.Generator, n: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """`n` points uniformly in a disc: (n, 2) as (y, x)."""
    r = radius * np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.column_stack([centre[0] + r * np.sin(t), centre[1] + r * np.cos(t)])


def make_patch(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One patch of a `KINDS` kind: (96, 96, 3) uint8 and (96, 96) bool mask."""
    mask = np.zeros((PATCH, PATCH), bool)
    hema = np.zeros((PATCH, PATCH), np.float32)
    if kind == "blank":
        # Glass or fat: pale background with a few thin pink membranes around empty vacuoles.
        eosin = 0.05 * smooth_noise(rng, 3)
        if rng.random() < 0.6:
            cells = scatter(rng, rng.integers(6, 14), (48, 48), 70)
            dist = np.min([np.hypot(_YY - y, _XX - x) for y, x in cells], axis=0)
            second = np.sort([np.hypot(_YY - y, _XX - x) for y, x in cells], axis=0)[1]
            eosin = eosin + 0.5 * np.exp(-(((second - dist) / 1.5) ** 2))
    else:
        eosin = 0.25 + 0.45 * smooth_noise(rng, 4) + 0.1 * smooth_noise(rng, 12)
        holes = smooth_noise(rng, 3) > rng.uniform(0.75, 1.0)  # some white space between fibres
        eosin = np.where(holes, eosin * 0.2, eosin)
        n_lymph = int(rng.integers(15, 70))
        draw_nuclei(hema, None, rng, rng.uniform(0, PATCH, (n_lymph, 2)), (1.8, 3.0), (0.9, 1.3), 0.1)
        if kind in ("tumour", "edge", "ring"):
            if kind == "tumour":
                centre = rng.uniform(36, 60, 2)
                radius = rng.uniform(12, 34)
            elif kind == "edge":  # the cluster's rim crosses a side of the centre box by 2-10 px
                radius = rng.uniform(10, 20)
                along, across = rng.uniform(32, 64), 32 - radius + rng.uniform(2, 10)
                centre = [(across, along), (along, across), (PATCH - across, along), (along, PATCH - across)][
                    rng.integers(4)]
            else:  # wholly in the outer ring, clear of the centre 32x32
                radius = rng.uniform(7, 11)
                side = rng.integers(4)
                along = rng.uniform(10, 86)
                across = rng.uniform(radius + 1, 31 - radius - 7)
                centre = [(across, along), (along, across), (PATCH - across, along), (along, PATCH - across)][
                    side
                ]
            n = int(np.pi * radius**2 / rng.uniform(45, 70))  # crowded, nuclei touching
            draw_nuclei(hema, mask, rng, scatter(rng, n, centre, radius), (3.5, 6.5), (1.3, 1.9), 0.45)
    stain = [v * rng.uniform(0.85, 1.15, 3).astype(np.float32) for v in (HEMATOXYLIN, EOSIN)]
    od = hema[..., None] * stain[0] + eosin[..., None] * stain[1]  # (96, 96, 3) optical density
    light = rng.uniform(225, 250) * rng.uniform(0.96, 1.04, 3)
    rgb = light * np.exp(-od * rng.uniform(0.8, 1.2)) + rng.normal(0, 3, (PATCH, PATCH, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def patch_id(seed: int, split: str, i: int) -> str:
    """A 40-hex id like Kaggle's, stable for (seed, split, i)."""
    return hashlib.sha1(f"pcam-demo|{seed}|{split}|{i}".encode()).hexdigest()


def make_demo(
    out,
    n_train: int = 5000,
    n_test: int = 500,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Writes a synthetic dataset in the Kaggle layout to `out`.

    Writes train/<id>.tif, test/<id>.tif, train_labels.csv, sample_submission.csv and tumour_masks.npz
    (ids and bit-packed 96x96 masks for every patch). The same seed gives the same files. The set is
    written to a temporary sibling folder and renamed into place, so an interrupted run leaves nothing.

    Returns:
        dict with n_train, n_test and n_positive (tumour patches in train).
    """
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"demo needs a positive number of patches, got n_train={n_train}, n_test={n_test}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new folder for the demo dataset")
    final, out = out, out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    try:
        summary = _write_demo(out, n_train, n_test, seed, progress)
        if final.exists():
            final.rmdir()
        out.rename(final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    log.info(
        "demo: %d train (%d tumour), %d test patches in %s", n_train, summary["n_positive"], n_test, final
    )
    return summary


CHUNK = 250  # patches per worker task


def _write_chunk(job: tuple[Path, str, int, int, int]) -> tuple[int, list[tuple[str, int]], list[np.ndarray]]:
    """Writes patches start..stop of a split; each has its own seed, so the split is the same in any
    order. Returns (start, [(id, label)], [packed mask bits])."""
    folder, split, seed, start, stop = job
    kinds, weights = list(KINDS), np.array(list(KINDS.values()))
    rows, bits = [], []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, split == "test", i])
        image, mask = make_patch(rng, kinds[rng.choice(len(kinds), p=weights)])
        pid = patch_id(seed, split, i)
        tifffile.imwrite(folder / f"{pid}.tif", image, photometric="rgb")
        rows.append((pid, int(mask[CENTRE, CENTRE].any())))
        bits.append(np.packbits(mask.reshape(-1)))
    return start, rows, bits


def _write_demo(out: Path, n_train: int, n_test: int, seed: int, progress) -> dict:
    """The patches in chunks over the machine's cores (`pack`'s process pool rules)."""
    from pcam_core.data.pack import main_script_hidden, pool_context

    ids, bits, rows = [], [], {"train": [], "test": []}
    jobs = []
    for split, n in (("train", n_train), ("test", n_test)):
        (out / split).mkdir(parents=True, exist_ok=True)
        jobs += [(out / split, split, seed, start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]
    total, done, results = n_train + n_test, 0, {}
    workers = min(os.cpu_count() or 1, len(jobs))
    with main_script_hidden(), ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        futures = {pool.submit(_write_chunk, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                job = futures[future]
                results[job[1], job[3]] = future.result()
                done += job[4] - job[3]
                if progress:
                    progress(done, total)
        except BaseException:  # Ctrl-C: drop the queued chunks and let the running ones end (a second
            # or two), so that nothing is written after make_demo removes the folder
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for job in jobs:  # in order: the CSVs and masks list the patches as before
        _, chunk_rows, chunk_bits = results[job[1], job[3]]
        rows[job[1]] += chunk_rows
        ids += [pid for pid, _ in chunk_rows]
        bits += chunk_bits
    pd.DataFrame(rows["train"], columns=["id", "label"]).to_csv(out / "train_labels.csv", index=False)
    pd.DataFrame({"id": [r[0] for r in rows["test"]], "label": 0}).to_csv(
        out / "sample_submission.csv", index=False
    )
    np.savez_compressed(out / "tumour_masks.npz", ids=np.array(ids), bits=np.stack(bits))
    n_positive = sum(label for _, label in rows["train"])
    return {"n_train": n_train, "n_test": n_test, "n_positive": n_positive}


def noisy_copy(data: str | Path, out: str | Path, share: float = 0.05, seed: int = 0) -> set[str]:
    """A copy of a labelled Kaggle-layout folder with `share` of its training labels flipped (0 <-> 1),
    chosen at random with `seed`, to measure how well label errors are found. The image folders and masks
    are linked, not copied. Returns the flipped ids."""
    data, out = Path(data), Path(out)
    out.mkdir(parents=True)
    for name in ("train", "test", "tumour_masks.npz", "sample_submission.csv"):
        if (data / name).exists():
            (out / name).symlink_to((data / name).resolve())
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    labels.loc[flip, "label"] = 1 - labels.loc[flip, "label"]
    labels.to_csv(out / "train_labels.csv", index=False)
    return set(labels["id"].iloc[flip])


def duplicated_copy(data: str | Path, out: str | Path, per_transform: int = 2, jpeg: int = 8,
                    seed: int = 0) -> pd.DataFrame:
    """A copy of a Kaggle-layout folder with duplicates planted, to measure how well they are found.

    For each of the 8 dihedral transforms, `per_transform` training patches are copied under it (pixels
    identical up to the transform); `jpeg` more are re-compressed as JPEG at quality 90 (near copies). The
    sources are distinct tissue patches (no blank glass), every other copy goes to test/, and the
    originals are linked, not copied. Returns the planted pairs: source, copy, copy_split, kind ("exact"
    or "near"), transform.
    """
    import io

    from PIL import Image

    from pcam_core.data.pack import BLANK_TISSUE, STATS_COLUMNS, patch_stats

    data, out = Path(data), Path(out)
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    tests = pd.read_csv(data / "sample_submission.csv", dtype={"id": str})
    for split, ids in (("train", labels["id"]), ("test", tests["id"])):
        (out / split).mkdir(parents=True)
        for pid in ids:
            (out / split / f"{pid}.tif").symlink_to((data / split / f"{pid}.tif").resolve())
    rng = np.random.default_rng(seed)
    wanted, sources = 8 * per_transform + jpeg, []
    for row in rng.permutation(len(labels)):
        image = tifffile.imread(data / "train" / f"{labels['id'].iloc[row]}.tif")
        if patch_stats(image[None])[0, STATS_COLUMNS.index("tissue_frac")] >= BLANK_TISSUE:  # no blank glass
            sources.append((row, image))
        if len(sources) == wanted:
            break
    planted, new_labels, new_tests = [], [], []
    for n, (row, image) in enumerate(sources):
        source = labels["id"].iloc[row]
        if n < 8 * per_transform:
            kind, k, copy = "exact", n % 8, np.ascontiguousarray(dihedral(image, n % 8))
        else:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=90)
            kind, k, copy = "near", 0, np.asarray(Image.open(buffer).convert("RGB"))
        split = "test" if (n + n // 8) % 2 else "train"  # each transform once on each side when possible
        pid = hashlib.sha1(f"copy-{seed}-{n}-{source}".encode()).hexdigest()
        tifffile.imwrite(out / split / f"{pid}.tif", copy, photometric="rgb")
        (new_tests if split == "test" else new_labels).append((pid, int(labels["label"].iloc[row])))
        planted.append((source, pid, split, kind, k))
    pd.concat([labels, pd.DataFrame(new_labels, columns=["id", "label"])]).to_csv(
        out / "train_labels.csv", index=False)
    pd.concat([tests, pd.DataFrame({"id": [p for p, _ in new_tests], "label": 0})]).to_csv(
        out / "sample_submission.csv", index=False)
    return pd.DataFrame(planted, columns=["source", "copy", "copy_split", "kind", "transform"])
