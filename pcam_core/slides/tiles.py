"""Deep Zoom (DZI) tiles of the slides a page offers, for a pan-and-zoom viewer (OpenSeadragon).

Tiles come from `openslide.deepzoom.DeepZoomGenerator` with `limit_bounds=False`, so a DZI pixel at the
deepest level is a level-0 pixel and the map's `Grid` lines up with the tiles. A slide is named by an
opaque token the page handed out (`TileServer.offer`), never by a path: a request can reach only the slides
offered. The token is made from the slide's path, size, modification time and content stamp, so a slide
replaced on disk gets a new token (and the browser's cache, keyed by the URL, never serves the old one).

One OpenSlide handle per slide, OpenSlide's own tile cache, and an LRU of encoded tiles; a region that
cannot be read becomes a grey tile (the viewer shows the rest) and is counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from pcam_core.slides.cache import content_stamp

log = logging.getLogger(__name__)

TILE_SIZE = 254  # + 2 px of overlap: 256 px tiles, a power of two as OpenSeadragon prefers
OVERLAP = 1
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
ENCODED_TILES = 2048  # about 60 MB of JPEG tiles
OPENSLIDE_CACHE = 64 * 1024 * 1024  # bytes of decoded slide tiles OpenSlide keeps, shared by the handles
GREY = (216, 216, 216)
MAPS = 16  # encoded maps kept for viewers (a few slides x thresholds' worth of reruns)
NOT_SCORED = 255  # the map PNG's value for a cell without a P (glass, unreadable)


@dataclass
class Offered:
    path: Path
    deepzoom: DeepZoomGenerator
    failed: int = 0  # regions that could not be read (grey tiles served)


class TileServer:
    """The slides offered to viewers, by token, and their tiles."""

    def __init__(self, encoded_tiles: int = ENCODED_TILES):
        self._slides: dict[str, Offered] = {}
        self._tiles: OrderedDict[tuple, bytes] = OrderedDict()
        self._capacity = encoded_tiles
        self._lock = threading.Lock()
        self._cache = openslide.OpenSlideCache(OPENSLIDE_CACHE)
        self._maps: OrderedDict[str, bytes] = OrderedDict()

    def offer(self, path: str | Path) -> str:
        """The token of `path` for tile requests (the same while the file is unchanged)."""
        path = Path(path).resolve()
        stat = path.stat()
        token = hashlib.blake2b(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{content_stamp(path)}".encode(),
                                digest_size=12).hexdigest()
        with self._lock:
            if token not in self._slides:
                try:
                    handle = openslide.open_slide(str(path))
                except (openslide.OpenSlideError, OSError, ValueError) as e:
                    raise ValueError(f"{path.name} cannot be opened for viewing ({e})") from e
                if isinstance(handle, openslide.OpenSlide):
                    handle.set_cache(self._cache)
                deepzoom = DeepZoomGenerator(handle, TILE_SIZE, OVERLAP, limit_bounds=False)
                self._slides[token] = Offered(path, deepzoom)
        return token

    def _offered(self, token: str) -> Offered:
        offered = self._slides.get(token)
        if offered is None:
            raise KeyError(token)
        return offered

    def dzi(self, token: str, fmt: str = "jpeg") -> str:
        """The DZI descriptor (XML) of an offered slide; KeyError for a token that names none."""
        return self._offered(token).deepzoom.get_dzi(fmt)

    def generator(self, token: str) -> DeepZoomGenerator:
        """The slide's Deep Zoom generator (its levels, tiles and their level-0 boxes)."""
        return self._offered(token).deepzoom

    def levels(self, token: str) -> list[tuple[int, int]]:
        """(width, height) of each DZI level, smallest first; the last is level 0 of the slide."""
        return list(self._offered(token).deepzoom.level_dimensions)

    def tile(self, token: str, level: int, col: int, row: int, fmt: str = "jpeg", quality: int = 90) -> bytes:
        """An encoded tile. KeyError: no such token; ValueError: no such level, tile or format."""
        if fmt not in FORMATS:
            raise ValueError(f"tile format must be one of {sorted(FORMATS)}, got {fmt!r}")
        key = (token, level, col, row, fmt, quality)
        with self._lock:
            if key in self._tiles:
                self._tiles.move_to_end(key)
                return self._tiles[key]
        offered = self._offered(token)
        image = self._read(offered, level, col, row)
        buffer = io.BytesIO()
        options = {"quality": quality} if fmt == "jpeg" else {}
        image.save(buffer, "JPEG" if fmt == "jpeg" else "PNG", **options)
        data = buffer.getvalue()
        with self._lock:
            self._tiles[key] = data
            while len(self._tiles) > self._capacity:
                self._tiles.popitem(last=False)
        return data

    def _read(self, offered: Offered, level: int, col: int, row: int) -> Image.Image:
        deepzoom = offered.deepzoom
        if not 0 <= level < deepzoom.level_count:
            raise ValueError(f"level {level} is not one of the slide's {deepzoom.level_count} DZI levels")
        cols, rows = deepzoom.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"tile ({col}, {row}) is outside level {level}'s {cols} x {rows} tiles")
        try:
            return deepzoom.get_tile(level, (col, row)).convert("RGB")
        except (openslide.OpenSlideError, OSError) as e:  # a damaged region: grey, and the rest still shows
            offered.failed += 1
            log.warning("%s: tile %d/%d_%d cannot be read (%s); served grey", offered.path.name, level, col,
                        row, e)
            return Image.new("RGB", deepzoom.get_tile_dimensions(level, (col, row)), GREY)

    def failed(self, token: str) -> int:
        """How many tiles of the slide could not be read (served grey)."""
        return self._offered(token).failed

    def offer_map(self, prob: np.ndarray) -> str:
        """The token of a tumour map for viewers: `map_png(token)` is the map as an 8-bit grey PNG, one pixel
        per cell, P(tumour) * 254 rounded, NOT_SCORED where a cell has no P. The token is the PNG's hash, so
        the browser may cache it for good."""
        data = map_png(prob)
        token = hashlib.blake2b(data, digest_size=12).hexdigest()
        with self._lock:
            self._maps[token] = data
            self._maps.move_to_end(token)
            while len(self._maps) > MAPS:
                self._maps.popitem(last=False)
        return token

    def map(self, token: str) -> bytes:
        """The PNG of an offered map; KeyError for a token that names none."""
        with self._lock:
            return self._maps[token]


def map_png(prob: np.ndarray) -> bytes:
    """A map of P(tumour) as an 8-bit grey PNG (rows x cols pixels): round(P * 254), NOT_SCORED for NaN."""
    prob = np.asarray(prob, np.float32)
    values = np.where(np.isfinite(prob), np.rint(np.clip(np.nan_to_num(prob), 0, 1) * 254), NOT_SCORED)
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint8), mode="L").save(buffer, "PNG", optimize=False)
    return buffer.getvalue()
