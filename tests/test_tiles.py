"""Deep Zoom tiles of the slides a page offers: the DZI geometry lines up with level-0 pixels and the map's
grid, a deepest tile is the slide's own pixels, and the routes serve only what was offered."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from app.compute.tiles import ROUTES
from app.compute.tiles import SERVER as ROUTED
from pcam_core.slides.demo import make_demo_slide
from pcam_core.slides.reader import Grid, open_slide
from pcam_core.slides.tiles import NOT_SCORED, OVERLAP, TILE_SIZE, TileServer


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiles") / "demo.tif"
    make_demo_slide(path, 1536, 1024, seed=3)
    return path


def slides_to_check(demo_slide) -> list[Path]:
    real = os.environ.get("PCAM_SLIDES_DIR")
    return [demo_slide] + ([Path(real) / "CMU-1-Small-Region.svs"] if real else [])


def test_dzi_levels_and_tiles_line_up_with_level_0_and_the_grid(demo_slide):
    server = TileServer()
    for path in slides_to_check(demo_slide):
        slide = open_slide(path)
        token = server.offer(path)
        levels = server.levels(token)
        w, h = slide.size
        assert len(levels) == math.ceil(math.log2(max(w, h))) + 1 and levels[-1] == (w, h)  # DZI px = level 0
        xml = server.dzi(token)
        assert f'Width="{w}"' in xml and f'Height="{h}"' in xml and f'TileSize="{TILE_SIZE}"' in xml
        deepest = server.generator(token)
        assert deepest.level_tiles[-1] == (math.ceil(w / TILE_SIZE), math.ceil(h / TILE_SIZE))
        # a map cell at stride 32 -> its level-0 box -> the deepest tile holding its centre
        grid = Grid.of(slide, 32)
        row, col = grid.rows // 2, grid.cols // 3
        x, y, size = grid.cell_box(row, col)
        tile_col, tile_row = int(x + size // 2) // TILE_SIZE, int(y + size // 2) // TILE_SIZE
        (left, top), _, (tw, th) = deepest.get_tile_coordinates(len(levels) - 1, (tile_col, tile_row))
        assert left <= x + size // 2 < left + tw and top <= y + size // 2 < top + th


def test_a_deepest_png_tile_is_the_slides_own_pixels(demo_slide):
    server = TileServer()
    for path in slides_to_check(demo_slide):
        token = server.offer(path)
        level = len(server.levels(token)) - 1
        deepzoom = server.generator(token)
        for col, row in ((0, 0), (1, 1), (deepzoom.level_tiles[level][0] - 1, 0)):
            tile = np.asarray(Image.open(io.BytesIO(server.tile(token, level, col, row, "png"))))
            location, _, size = deepzoom.get_tile_coordinates(level, (col, row))
            region = open_slide(path).handle.read_region(location, 0, size).convert("RGB")
            np.testing.assert_array_equal(tile, np.asarray(region))
            assert tile.shape[:2] == (size[1], size[0]) and max(size) <= TILE_SIZE + 2 * OVERLAP


def test_the_routes_serve_offered_slides_only(demo_slide, tmp_path):
    client = TestClient(Starlette(routes=ROUTES))
    token = ROUTED.offer(demo_slide)
    xml = client.get(f"/tiles/{token}.dzi")
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
    assert "immutable" in xml.headers["cache-control"]
    level = len(ROUTED.levels(token)) - 1
    tile = client.get(f"/tiles/{token}_files/{level}/0_0.jpeg")
    assert tile.status_code == 200 and Image.open(io.BytesIO(tile.content)).size == (255, 255)
    for bad in (f"/tiles/{'0' * 24}.dzi",  # a token nothing was offered under
                f"/tiles/{str(demo_slide).replace('/', '%2F')}.dzi",  # a path where a token goes
                "/tiles/..%2F..%2Fetc%2Fpasswd.dzi",
                f"/tiles/{token}_files/{level + 1}/0_0.jpeg",  # no such level
                f"/tiles/{token}_files/{level}/999_0.jpeg",  # no such tile
                f"/tiles/{token}_files/{level}/0_0.gif"):  # no such format
        assert client.get(bad).status_code == 404, bad


def test_a_replaced_slide_gets_a_new_token_and_a_damaged_one_grey_tiles(demo_slide, tmp_path):
    server = TileServer()
    copy = tmp_path / "slide.tif"
    shutil.copy(demo_slide, copy)
    first = server.offer(copy)
    assert server.offer(copy) == first  # unchanged: the same token
    make_demo_slide(tmp_path / "other.tif", 1536, 1024, seed=4)
    shutil.copy(tmp_path / "other.tif", copy)
    assert server.offer(copy) != first  # replaced on disk: served afresh under another token
    damaged = tmp_path / "damaged.tif"
    data = demo_slide.read_bytes()
    damaged.write_bytes(data[: len(data) * 2 // 3])  # the last tiles' bytes are gone
    token = server.offer(damaged)
    level = len(server.levels(token)) - 1
    cols, rows = server.generator(token).level_tiles[level]
    tiles = [server.tile(token, level, c, r, "png") for c in range(cols) for r in range(rows)]
    assert all(Image.open(io.BytesIO(t)).mode == "RGB" for t in tiles)
    assert server.failed(token) > 0  # counted, and every tile still came back


def test_a_map_is_served_as_one_grey_pixel_per_cell_and_the_bundle_beside_it():
    prob = np.array([[0.0, 0.5, 1.0], [np.nan, 0.25, 0.999]], np.float32)
    token = ROUTED.offer_map(prob)
    assert ROUTED.offer_map(prob.copy()) == token  # the same map: the same token (cached for good)
    client = TestClient(Starlette(routes=ROUTES))
    reply = client.get(f"/tiles/maps/{token}.png")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    values = np.asarray(Image.open(io.BytesIO(reply.content)))
    assert values.tolist() == [[0, 127, 254], [NOT_SCORED, 64, 254]]  # round(P * 254); NaN: not scored
    assert client.get("/tiles/maps/" + "0" * 24 + ".png").status_code == 404
    bundle = client.get("/viewer/openseadragon.min.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert client.get("/viewer/../compute/tiles.py").status_code == 404


def test_the_shipped_bundle_is_the_version_the_lock_file_pins():
    viewer = Path(__file__).resolve().parents[1] / "app" / "components"
    pinned = json.loads((viewer / "package-lock.json").read_text())["packages"]["node_modules/openseadragon"]
    head = (viewer / "static" / "openseadragon.min.js").read_text()[:200]
    assert head.startswith(f"//! openseadragon {pinned['version']}\n"), head
    assert json.loads((viewer / "package.json").read_text())["dependencies"]["openseadragon"] == \
        pinned["version"]
    assert "BSD" in (viewer / "static" / "openseadragon-LICENSE.txt").read_text()[:2000] or \
        "Redistribution" in (viewer / "static" / "openseadragon-LICENSE.txt").read_text()
