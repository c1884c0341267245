"""`bench --only viewer`: how fast the slide viewer's Deep Zoom tiles come back, level by level.

Per slide (a synthetic demo slide, and `CMU-1-Small-Region.svs` when PCAM_SLIDES_DIR holds it) and per DZI
level from the 256 px overview down to level 0: p50 and p95 of a tile request cold (a fresh tile server: the
slide's pixels decoded, resampled and encoded as JPEG) and warm (the same tiles again, from the LRU of
encoded tiles). Up to 64 tiles a level, spread over the level.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

TILES_PER_LEVEL = 64


def _latencies(server, token: str, level: int, tiles: list[tuple[int, int]]) -> np.ndarray:
    times = []
    for col, row in tiles:
        start = time.perf_counter()
        server.tile(token, level, col, row)
        times.append(time.perf_counter() - start)
    return np.asarray(times) * 1000


def bench_viewer(data_dir: Path, device: str) -> list[dict]:
    from pcam_core.slides.demo import make_demo_slide
    from pcam_core.slides.tiles import TileServer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        slides = [Path(tmp) / "demo.tif"]
        make_demo_slide(slides[0], 6144, 4096, seed=0)
        real = Path(os.environ.get("PCAM_SLIDES_DIR", "")) / "CMU-1-Small-Region.svs"
        slides += [real] if real.is_file() else []
        for path in slides:
            cold_server = TileServer()
            token = cold_server.offer(path)
            deepzoom = cold_server.generator(token)
            for level in range(8, deepzoom.level_count):  # 256 px a side and up
                cols, rows_ = deepzoom.level_tiles[level]
                pick = np.linspace(0, cols * rows_ - 1, min(TILES_PER_LEVEL, cols * rows_)).astype(int)
                tiles = [(int(i % cols), int(i // cols)) for i in pick]
                cold = _latencies(cold_server, token, level, tiles)
                warm = _latencies(cold_server, token, level, tiles)
                w, h = deepzoom.level_dimensions[level]
                where = f"{path.name} DZI level {level} ({w:,} x {h:,} px, {len(tiles)} tiles)"
                for name, ms in (("cold", cold), ("warm", warm)):
                    rows.append({"what": f"{where} {name} tile p50 (p95 {np.percentile(ms, 95):.1f} ms)",
                                 "value": float(np.percentile(ms, 50)), "unit": "ms"})
    return rows
