"""A synthetic whole-slide image with known tumour: a pyramidal tiled TIFF that OpenSlide opens.

The tissue is drawn with the demo patches' recipe (`data/demo.py`: Beer-Lambert stain mixing, small round
lymphocyte nuclei on eosin stroma) over a whole section on glass, with a few tumour regions of large,
dark, crowded, irregular nuclei. The tumour mask marks the tumour nuclei, as the demo patches' masks do,
so a cell's true label follows PCam's rule: tumour pixels inside its centre 32 x 32. The TIFF stores its
scale in its resolution tags (OpenSlide reports it as microns per pixel) and halves at each level.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import shapely
import shapely.geometry
import tifffile

from pcam_core.atomic import write_text
from pcam_core.data.demo import EOSIN, HEMATOXYLIN, draw_nuclei, scatter, smooth_noise
from pcam_core.slides.reader import PCAM_MPP

log = logging.getLogger(__name__)

TILE = 256


def make_slide_image(width: int, height: int, seed: int = 0, tumours: int = 4
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 slide at PCam's scale and its (H, W) bool tumour mask."""
    rng = np.random.default_rng([seed, width, height])
    shape = (height, width)
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    # one section: an irregular blob filling most of the glass
    tissue = (1 - np.sqrt(xx**2 + yy**2)) + 0.6 * (smooth_noise(rng, 5, shape) - 0.5) > 0.25
    eosin = 0.25 + 0.45 * smooth_noise(rng, max(4, width // 24), shape) + 0.1 * smooth_noise(
        rng, max(12, width // 8), shape)
    eosin = np.where(smooth_noise(rng, max(3, width // 32), shape) > 0.85, eosin * 0.2, eosin)
    hema = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    n_lymph = int(tissue.sum() * 40 / 96**2)
    points = rng.uniform((0, 0), shape, (n_lymph * 2, 2))
    points = points[tissue[points[:, 0].astype(int), points[:, 1].astype(int)]][:n_lymph]
    draw_nuclei(hema, None, rng, points, (1.8, 3.0), (0.9, 1.3), 0.1)
    inside = np.argwhere(tissue[::32, ::32]) * 32
    for _ in range(tumours):
        cy, cx = inside[rng.integers(len(inside))]
        radius = rng.uniform(0.05, 0.12) * min(shape)
        n = int(np.pi * radius**2 / rng.uniform(45, 70))
        nuclei = scatter(rng, n, (cy, cx), radius)
        keep = (nuclei >= 0).all(1) & (nuclei[:, 0] < height) & (nuclei[:, 1] < width)
        nuclei = nuclei[keep]
        nuclei = nuclei[tissue[nuclei[:, 0].astype(int), nuclei[:, 1].astype(int)]]
        draw_nuclei(hema, mask, rng, nuclei, (3.5, 6.5), (1.3, 1.9), 0.45)
    eosin = np.where(tissue, eosin, 0.02 * smooth_noise(rng, 8, shape))
    od = hema[..., None] * HEMATOXYLIN + eosin[..., None] * EOSIN  # (H, W, 3) optical density
    rgb = 240 * np.exp(-od) + rng.normal(0, 3, (*shape, 3)).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def write_slide(path: str | Path, image: np.ndarray, mpp: float = PCAM_MPP, compression: str = "zlib"
                ) -> None:
    """Writes `image` as a pyramidal tiled TIFF (levels halving down to about a tile) with its scale."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    level, down = image, 1
    try:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tif:
            while True:
                res = 1e4 / (mpp * down)  # pixels per centimetre
                tif.write(level, tile=(TILE, TILE), photometric="rgb", compression=compression,
                          resolution=(res, res), resolutionunit="CENTIMETER",
                          subfiletype=1 if down > 1 else 0)
                if max(level.shape[:2]) <= 2 * TILE:
                    break
                h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2  # 2 x 2 means, the pyramid's rule
                level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
                down *= 2
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def make_demo_slide(path: str | Path, width: int = 3072, height: int = 2048, seed: int = 0,
                    mpp: float = PCAM_MPP) -> dict:
    """Writes a synthetic slide to `path` (a .tif) and its tumour mask beside it (`<stem>_mask.npz`).

    Args:
        width, height: level-0 size in pixels, drawn at PCam's scale.
        mpp: the scale written into the file; a finer one (e.g. 0.486) doubles the pixels by repetition,
            so the same tissue read back at the model's scale is exactly the drawn image.
    """
    image, mask = make_slide_image(width, height, seed)
    factor = PCAM_MPP / mpp
    if factor != 1:
        if factor != round(factor) or factor < 1:
            raise ValueError(f"a demo slide's mpp must be {PCAM_MPP} divided by a whole number, got {mpp}")
        image = image.repeat(int(factor), 0).repeat(int(factor), 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_slide(path, image, mpp)
    np.savez_compressed(mask_path(path), mask=mask, mpp=PCAM_MPP)
    write_outline(outline_path(path), mask_outline(mask.repeat(int(factor), 0).repeat(int(factor), 1)
                                                   if factor != 1 else mask))
    log.info("demo slide %s: %d x %d px, %.1f%% tumour pixels", path, width, height, 100 * mask.mean())
    return {"path": str(path), "width": image.shape[1], "height": image.shape[0],
            "tumour_share": float(mask.mean())}


def mask_path(slide_path: str | Path) -> Path:
    slide_path = Path(slide_path)
    return slide_path.with_name(f"{slide_path.stem}_mask.npz")


def synthetic_model_warning(trained_on: str | Path | None, slide_path: str | Path) -> str | None:
    """A warning when a model that learned from the synthetic demo patches meets a real slide: its map there
    says little about real tissue (the demo set is the one with `tumour_masks.npz`, a demo slide has its
    mask beside it)."""
    if not trained_on or not (Path(trained_on) / "tumour_masks.npz").is_file():
        return None
    if mask_path(slide_path).is_file():
        return None
    return (f"This model learned from the synthetic demo patches ({Path(trained_on).name}), and "
            f"{Path(slide_path).name} is a real slide: its map says little about real tissue. Train on real "
            "patches (a Kaggle or PCam folder) before trusting it here.")


def outline_path(slide_path: str | Path) -> Path:
    """The tumour's outline as QuPath GeoJSON, named after the slide (`slide-eval` finds it so)."""
    slide_path = Path(slide_path)
    return slide_path.with_name(f"{slide_path.stem}.geojson")


def mask_outline(mask: np.ndarray) -> shapely.Geometry:
    """The tumour pixels of an (H, W) mask as polygons in pixel coordinates: each row's runs, merged."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    rows, cols = np.nonzero(np.diff(padded, axis=1))  # run starts and ends, alternating along each row
    return shapely.union_all(shapely.box(cols[::2], rows[::2], cols[1::2], rows[::2] + 1))


def write_outline(path: Path, outline: shapely.Geometry) -> None:
    """`outline` as a QuPath GeoJSON FeatureCollection of Tumor annotations."""
    features = [{"type": "Feature", "geometry": shapely.geometry.mapping(region),
                 "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}
                for region in getattr(outline, "geoms", [outline]) if not region.is_empty]
    write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))


def make_tissue_slide(path: str | Path, width: int, height: int, seed: int = 0) -> dict:
    """A large slide that is tissue everywhere, for throughput tests: the middle of one 4096 x 4096 demo
    slide repeated to `width` x `height` (drawing every nucleus of a gigapixel slide would take minutes)."""
    image, _ = make_slide_image(4096, 4096, seed)
    core = image[1536:2560, 1536:2560]  # inside the section's outline
    reps = (-(-height // core.shape[0]), -(-width // core.shape[1]), 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_slide(path, np.tile(core, reps)[:height, :width])
    return {"path": str(path), "width": width, "height": height, "tumour_share": float("nan")}
