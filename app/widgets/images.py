"""Patch pictures for the app: the centre box, nearest-neighbour zoom, uploaded files (numpy only)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pcam_core.geometry import CENTRE, PATCH

BOX_RGB = np.array([255, 220, 0], np.uint8)  # the centre-box colour: yellow reads on H&E pink and purple
MAX_UPLOAD_BYTES = 5 * 2**20  # matches server.maxUploadSize; a 96x96 TIFF is 28 kB
MAX_UPLOAD_SIDE = 4096


def upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour zoom: pathologists judge pixels, so no smoothing."""
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def with_centre_box(rgb: np.ndarray, scale: int = 1) -> np.ndarray:
    """Upscales a (96, 96, 3) patch by `scale` (nearest) and outlines the centre 32x32 just outside it."""
    big = upscale(rgb, scale)
    lo, hi = CENTRE.start * scale - 1, CENTRE.stop * scale
    width = 1 if scale == 1 else max(2, scale // 2)
    big[lo - width + 1:lo + 1, lo - width + 1:hi + width] = BOX_RGB
    big[hi:hi + width, lo - width + 1:hi + width] = BOX_RGB
    big[lo - width + 1:hi + width, lo - width + 1:lo + 1] = BOX_RGB
    big[lo - width + 1:hi + width, hi:hi + width] = BOX_RGB
    return big


@dataclass
class Upload:
    """An uploaded patch: (96, 96, 3) uint8 pixels, and what was done to the file to get them ("" when
    it was a 96 x 96 patch already)."""

    patch: np.ndarray
    note: str


def read_upload(data: bytes, name: str) -> Upload:
    """A patch from an uploaded image file; a larger image is centre-cropped (never resized).

    Raises ValueError, with what to do, for a file that is too big, not an image, or smaller than 96x96.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{name} is {len(data) / 2**20:.1f} MB; upload a single patch (under 5 MB)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) > MAX_UPLOAD_SIDE:
                raise ValueError(f"{name} is {image.size[0]}x{image.size[1]} px; upload a patch, not a slide")
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name} is not a readable image ({e}); upload a .tif, .png or .jpg patch") from e
    h, w = rgb.shape[:2]
    if h < PATCH or w < PATCH:
        raise ValueError(f"{name} is {w}x{h} px; a patch must be at least {PATCH}x{PATCH} "
                         "(larger images are centre-cropped)")
    top, left = (h - PATCH) // 2, (w - PATCH) // 2
    note = "" if (h, w) == (PATCH, PATCH) else (
        f"{name} is {w}x{h} px: only its centre {PATCH}x{PATCH} is shown and scored, at the file's own scale "
        "(nothing was resized). Crop the patch you mean before uploading, or open a large image on the "
        "Slides page.")
    return Upload(np.ascontiguousarray(rgb[top:top + PATCH, left:left + PATCH]), note)
