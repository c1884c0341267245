"""One patch file to a (96, 96, 3) uint8 array, or a ValueError saying what is wrong with it.

Size is checked before any decoding, from the file and then from its header, so a hostile or broken file
costs a stat and a header read, not gigabytes of memory in every decode worker.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from pcam_core.geometry import PATCH, PATCH_BYTES

_verified_headers: set[bytes] = set()
# A Kaggle patch file is 27,935 bytes. Anything far larger, on disk or as declared in its header, is not a
# patch: refusing it before decoding keeps a 3 GB sparse file or a 20480 x 20480 "zip bomb" TIFF from
# costing gigabytes of memory in every decode worker.
MAX_FILE_BYTES = 1 << 20
MAX_DECLARED_PIXELS = 4 * PATCH * PATCH


def decode_file(path: str | Path) -> np.ndarray:
    """One patch as (96, 96, 3) uint8; ValueError saying what is wrong with a bad file."""
    suffix = os.path.splitext(path)[1].lower()
    size = os.stat(path).st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file is {size / 2**20:.1f} MB; a 96x96 patch file is about 28 kB")
    with open(path, "rb") as f:
        raw = f.read()
    if suffix in (".tif", ".tiff"):
        # Kaggle's TIFFs are uncompressed with the pixels stored last, after a header that differs only
        # in a few fields (a timestamp). A file whose header bytes equal those of a file tifffile decoded
        # to exactly its last 27,648 bytes stores its pixels at the same place: read them directly.
        if len(raw) > PATCH_BYTES and raw[:-PATCH_BYTES] in _verified_headers:
            return np.frombuffer(raw, np.uint8, offset=len(raw) - PATCH_BYTES).reshape(PATCH, PATCH, 3)
        arr = _decode_tiff(raw, path)
        if len(raw) > PATCH_BYTES and raw[-PATCH_BYTES:] == arr.tobytes() and len(_verified_headers) < 65536:
            _verified_headers.add(raw[:-PATCH_BYTES])
        return arr
    return _decode_pil(raw, path)


def _decode_tiff(raw: bytes, path) -> np.ndarray:
    import tifffile

    arr = None
    try:
        with tifffile.TiffFile(io.BytesIO(raw)) as tif:
            pages, shape = len(tif.pages), tif.pages[0].shape
            if pages == 1 and int(np.prod(shape[:2])) <= MAX_DECLARED_PIXELS:
                arr = tif.pages[0].asarray()
    except Exception as e:  # tifffile raises many types for a corrupt file; all mean "unreadable"
        raise ValueError(f"unreadable TIFF ({type(e).__name__}: {e})") from None
    if pages != 1:
        raise ValueError(f"{pages} images in one TIFF, expected a single 96x96 RGB patch")
    if arr is None:
        raise ValueError(f"declares {shape[1]}x{shape[0]} px, expected 96x96; not decoded")
    return _check_shape(arr, path)


def _decode_pil(raw: bytes, path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.size[0] * im.size[1] > MAX_DECLARED_PIXELS:
                raise ValueError(f"declares {im.size[0]}x{im.size[1]} px, expected 96x96; not decoded")
            im.load()
            if im.mode != "RGB":
                raise ValueError(f"mode {im.mode}, expected RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"unreadable image ({e})") from None
    return _check_shape(arr, path)


def _check_shape(arr: np.ndarray, path) -> np.ndarray:
    if arr.ndim == 2:
        raise ValueError(f"greyscale {arr.shape[1]}x{arr.shape[0]}, expected 96x96 RGB")
    if arr.ndim != 3 or arr.shape[2] != 3:
        channels = arr.shape[2] if arr.ndim == 3 else arr.ndim
        raise ValueError(f"{channels} channels (e.g. RGBA), expected 96x96 RGB")
    if arr.shape[:2] != (PATCH, PATCH):
        raise ValueError(f"size {arr.shape[1]}x{arr.shape[0]}, expected 96x96")
    if arr.dtype != np.uint8:
        raise ValueError(f"{arr.dtype} pixels, expected 8-bit")
    return arr
