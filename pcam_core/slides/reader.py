"""Whole-slide images read at the model's scale: OpenSlide for scanner formats, Pillow for plain images.

`open_slide(path, mpp)` gives a `Slide`: the level-0 size, the microns per pixel (from the file's
metadata, or `mpp` given by the user, which wins), and `read(x, y, width, height)`, which returns a
region in *model pixels* (PCam's ~0.972 um/px by default) as uint8 RGB. A region is read from the
pyramid level closest to the model's scale without being coarser, resized once (area averaging when
shrinking), and composited on white where the slide is transparent or outside its bounds; a whole level
is never loaded. `tissue_mask` finds tissue on a thumbnail the way PCam did: by colour saturation.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from pcam_core.geometry import PATCH, PCAM_MPP

log = logging.getLogger(__name__)

MAX_UPSAMPLE = 2.0  # a slide more than 2x coarser than the model would be shown blurred, invented detail
# PCam dropped patches whose maximum saturation was under 0.07; per thumbnail pixel the same threshold
# keeps the tissue of both real test slides and drops their glass (BENCHMARKS.md "Slides").
MIN_SATURATION = 0.07
MIN_VALUE = 0.12  # black: slide-label shadows, pen, scanner borders
MIN_TISSUE = 0.25  # share of a cell that must be tissue for it to be scored
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
STRIDES = (32, 48, 96)  # cell sides in model pixels a map offers
BLOCK_PX = 512  # model pixels of cells per block side: one read of about 600 x 600 px
THUMBNAIL_READ = 4096  # a thumbnail is made from regions of at most this side: 64 MiB of RGBA at a time
MAX_THUMBNAIL_SOURCE = 10**9  # pixels of the slide's level read for a thumbnail (a pyramid needs a few M)


@dataclass(frozen=True)
class Grid:
    """Cells of `stride` model pixels over a slide; cell (row, col) starts at model pixel
    (col * stride, row * stride)."""

    stride: int
    rows: int
    cols: int
    scale: float  # level-0 pixels per model pixel

    @classmethod
    def of(cls, slide: Slide, stride: int) -> Grid:
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES} model pixels, got {stride}")
        w, h = slide.model_size
        return cls(stride, math.ceil(h / stride), math.ceil(w / stride), slide.scale)

    @property
    def pad(self) -> int:
        """Model pixels the window reaches beyond its cell on each side."""
        return (PATCH - self.stride) // 2

    @property
    def cell_size(self) -> float:
        """Level-0 pixels per cell side."""
        return self.stride * self.scale

    @property
    def block_cells(self) -> int:
        return max(1, BLOCK_PX // self.stride)

    def cell_box(self, row, col) -> tuple:
        """Level-0 (x, y, size) of the cell(s): rounded to whole pixels."""
        size = self.cell_size
        return np.round(np.asarray(col) * size).astype(int), np.round(np.asarray(row) * size).astype(int), \
            round(size)

    def window_box(self, row: int, col: int) -> tuple[int, int, int]:
        """Level-0 (x, y, size) of cell (row, col)'s 96 x 96 window, rounded to whole pixels."""
        x, y = self.window_origin(row, col)
        return round(x * self.scale), round(y * self.scale), round(PATCH * self.scale)

    def window_origin(self, row: int, col: int) -> tuple[int, int]:
        """Model pixel (x, y) of the top-left of cell (row, col)'s 96 x 96 window."""
        return col * self.stride - self.pad, row * self.stride - self.pad


class MissingScale(ValueError):
    """The slide's metadata has no microns per pixel and none was given."""


@dataclass
class Slide:
    """An open slide: `read` regions at `model_mpp`; `scale` level-0 pixels per model pixel."""

    path: Path
    handle: openslide.AbstractSlide
    mpp: float
    model_mpp: float
    thumbnails: dict = field(default_factory=dict, repr=False)  # by size: the mask and the overlay share one

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.handle.dimensions

    @property
    def scale(self) -> float:
        return self.model_mpp / self.mpp

    @property
    def model_size(self) -> tuple[int, int]:
        """(width, height) of the slide in model pixels."""
        w, h = self.size
        return math.ceil(w / self.scale), math.ceil(h / self.scale)

    def read(self, x: float, y: float, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8: the region whose top-left is model pixel (x, y).

        Raises:
            OSError: when the slide cannot decode the region (a damaged tile).
        """
        level = self.handle.get_best_level_for_downsample(self.scale)
        down = self.handle.level_downsamples[level]
        step = self.scale / down  # level pixels per model pixel
        lx, ly = x * step, y * step  # float level coordinates of the region
        ix, iy = math.floor(lx), math.floor(ly)
        iw, ih = math.ceil(lx + width * step) - ix, math.ceil(ly + height * step) - iy
        try:
            region = self.handle.read_region((round(ix * down), round(iy * down)), level, (iw, ih))
        except openslide.OpenSlideError as e:
            raise OSError(f"{self.path.name}: cannot read the region at level-0 "
                          f"({round(ix * down)}, {round(iy * down)}): {e}") from e
        rgb = Image.new("RGB", region.size, (255, 255, 255))
        rgb.paste(region, mask=region.getchannel("A"))  # transparent and out-of-bounds pixels: glass
        if step == 1 and lx == ix and ly == iy:  # the slide is at the model's scale: no resampling
            return np.asarray(rgb)
        box = (lx - ix, ly - iy, lx - ix + width * step, ly - iy + height * step)
        resample = Image.Resampling.BOX if step > 1 else Image.Resampling.BICUBIC
        return np.asarray(rgb.resize((width, height), resample, box=box))

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 thumbnail no larger than `max_side`, and its level-0 pixels per pixel.

        Read region by region from the pyramid level closest to the thumbnail's scale, so memory stays
        within one region however large the slide says it is; a slide whose smallest level is over
        MAX_THUMBNAIL_SOURCE pixels (no pyramid) is refused with a ValueError.
        """
        if max_side in self.thumbnails:
            return self.thumbnails[max_side]
        w, h = self.size
        down = max(w / max_side, h / max_side, 1.0)
        level = self.handle.get_best_level_for_downsample(down)
        lw, lh = self.handle.level_dimensions[level]
        if lw * lh > MAX_THUMBNAIL_SOURCE:
            raise ValueError(f"{self.path.name} declares {w:,} x {h:,} px with no pyramid level smaller "
                             f"than {lw:,} x {lh:,} px: even its overview would read {lw * lh / 1e9:.1f} "
                             "gigapixels. Save it as a pyramidal tiled TIFF (e.g. vips tiffsave --tile "
                             "--pyramid) and open that")
        scale = self.handle.level_downsamples[level] / down  # thumbnail pixels per level pixel
        canvas = Image.new("RGB", (max(1, round(w / down)), max(1, round(h / down))), "white")
        try:
            for y in range(0, lh, THUMBNAIL_READ):
                for x in range(0, lw, THUMBNAIL_READ):
                    self._paste_region(canvas, level, x, y, scale)
        except openslide.OpenSlideError as e:
            raise OSError(f"{self.path.name}: cannot read its thumbnail ({e}); the file may be damaged "
                          "or truncated") from e
        self.thumbnails[max_side] = np.asarray(canvas), max(w / canvas.width, h / canvas.height)
        return self.thumbnails[max_side]

    def _paste_region(self, canvas: Image.Image, level: int, x: int, y: int, scale: float) -> None:
        """One region of `level` (at level pixels x, y), shrunk into its place on the thumbnail."""
        lw, lh = self.handle.level_dimensions[level]
        rw, rh = min(THUMBNAIL_READ, lw - x), min(THUMBNAIL_READ, lh - y)
        left, top = math.floor(x * scale), math.floor(y * scale)
        right = min(canvas.width, math.floor((x + rw) * scale))
        bottom = min(canvas.height, math.floor((y + rh) * scale))
        if right <= left or bottom <= top:
            return
        origin = self.handle.level_downsamples[level]
        region = self.handle.read_region((round(x * origin), round(y * origin)), level, (rw, rh))
        white = Image.new("RGBA", region.size, (255, 255, 255, 255))  # no data (transparent) shows as glass
        rgb = Image.alpha_composite(white, region).convert("RGB")
        canvas.paste(rgb.resize((right - left, bottom - top), Image.Resampling.BOX), (left, top))

    def close(self) -> None:
        self.handle.close()


def open_slide(path: str | Path, mpp: float | None = None, model_mpp: float = PCAM_MPP) -> Slide:
    """Opens a whole-slide image (any format OpenSlide reads) or a plain PNG/JPEG/TIFF image.

    Args:
        path: the slide file.
        mpp: microns per level-0 pixel, overriding the metadata; required when the file has none.
        model_mpp: the scale the model was trained at (PCam: 0.972).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a slide or image, no scale known, or a scale too coarse for the model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide {path} does not exist; give a slide file or a folder of slides")
    try:
        handle = openslide.open_slide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path.name} is not a slide OpenSlide or Pillow can read ({e}); "
                         "give an .svs, .tif, .ndpi, .mrxs or other OpenSlide format, or a PNG/JPEG") from e
    try:
        slide = Slide(path, handle, _scale(path, handle, mpp), model_mpp)
        if slide.scale < 1 / MAX_UPSAMPLE:
            raise ValueError(f"{path.name} is scanned at {slide.mpp:g} um/px, more than {MAX_UPSAMPLE:g}x "
                             f"coarser than the model's {model_mpp:g} um/px; the model would see invented "
                             "detail. Use a finer scan (or check --mpp)")
        if min(slide.model_size) < 1:
            raise ValueError(f"{path.name} is smaller than one model pixel")
    except BaseException:
        handle.close()
        raise
    return slide


def _scale(path: Path, handle: openslide.AbstractSlide, mpp: float | None) -> float:
    if mpp is not None:
        if not (math.isfinite(mpp) and 0.01 <= mpp <= 100):
            raise ValueError(f"--mpp must be microns per pixel between 0.01 and 100, got {mpp}")
        return float(mpp)
    props = handle.properties
    values = [props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)]
    try:
        x, y = (float(v) for v in values)
    except (TypeError, ValueError):
        raise MissingScale(f"{path.name} has no scale (microns per pixel) in its metadata; give it with "
                           "--mpp (0.25 for a 40x scan, 0.5 for 20x, 1.0 for 10x)") from None
    if not (x > 0 and y > 0 and math.isfinite(x) and abs(x - y) / x < 0.05):
        raise ValueError(f"{path.name} has an unusable scale in its metadata ({x} x {y} um/px); "
                         "give the right one with --mpp")
    return (x + y) / 2


def tissue_mask(thumbnail: np.ndarray, min_saturation: float = MIN_SATURATION) -> np.ndarray:
    """(H, W) bool: pixels coloured like stained tissue (saturated, not black), as PCam selected patches."""
    hsv = np.asarray(Image.fromarray(thumbnail).convert("HSV"), dtype=np.float32) / 255
    return (hsv[..., 1] >= min_saturation) & (hsv[..., 2] >= MIN_VALUE)


def list_slides(folder: str | Path) -> list[Path]:
    """The files of `folder` that OpenSlide or Pillow may open, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"slide folder {folder} does not exist")
    known = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
             ".czi", *PLAIN_SUFFIXES)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in known)


# Worker side of `slide_map.score_slide`: each reading process keeps its own handle per slide (OpenSlide
# handles cannot cross processes) and returns one block of cells read at the model's scale.
_OPEN: dict[tuple, Slide] = {}


def read_block(path: str, mpp: float, model_mpp: float, box: tuple[int, int, int, int]) -> np.ndarray | str:
    """`Slide.read(*box)` of the slide at `path`, with the handle kept open between calls; the error's
    text when the region cannot be read."""
    try:
        key = (path, os.stat(path).st_mtime_ns, mpp, model_mpp)  # a rewritten file is opened afresh
        if key not in _OPEN:
            _OPEN[key] = open_slide(path, mpp, model_mpp)
        return _OPEN[key].read(*box)
    except (OSError, ValueError) as e:
        for stale in [k for k in _OPEN if k[0] == path]:  # OpenSlide refuses every call on a failed handle
            _OPEN.pop(stale).close()
        return str(e)
