"""Whole-slide maps: reading at the model's scale, tissue masking, tiling, outputs, and bad input.

The two real Aperio slides (../shared/data/slides, via $PCAM_SLIDES_DIR) test reading and drawing on real
files; a synthetic slide with a known tumour mask tests that the map is right.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from sklearn.metrics import roc_auc_score

from pcam_core.inference.infer import predict_images
from pcam_core.models.registry import load
from pcam_core.slides.cache import job_state, load_map
from pcam_core.slides.demo import make_demo_slide, make_slide_image, mask_path, write_slide
from pcam_core.slides.export import geojson
from pcam_core.slides.maps import cell_patch, map_slide, tissue_fraction
from pcam_core.slides.reader import PCAM_MPP, Grid, open_slide

pytest_plugins = ["apptest"]  # trained_runs: a base_cnn trained on the demo set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_slides() -> Path:
    path = os.environ.get("PCAM_SLIDES_DIR")
    if not path:
        pytest.skip("PCAM_SLIDES_DIR is unset (the real example slides are not available)")
    return Path(path)


@pytest.fixture(scope="session")
def demo_slide(tmp_path_factory) -> Path:
    """A 1536 x 1024 px synthetic slide at PCam's scale with four tumour regions."""
    path = tmp_path_factory.mktemp("slides") / "demo.tif"
    make_demo_slide(path, 1536, 1024, seed=3)
    return path


def cell_truth(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """PCam's rule per cell: tumour pixels inside the cell (the window's centre at stride 32)."""
    padded = np.zeros((grid.rows * grid.stride, grid.cols * grid.stride), bool)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    return padded.reshape(grid.rows, grid.stride, grid.cols, grid.stride).any(axis=(1, 3))


# --- real slides ---------------------------------------------------------------------------------------

def test_cmu_region_opens_at_its_scale_and_tiles_to_the_expected_grid(real_slides):
    slide = open_slide(real_slides / "CMU-1-Small-Region.svs")
    assert slide.size == (2220, 2967) and slide.mpp == pytest.approx(0.499)
    w, h = slide.model_size  # 2220 * 0.499 / 0.972 = 1139.7 model pixels
    assert (w, h) == (1140, 1524)
    for stride in (96, 32):
        grid = Grid.of(slide, stride)
        assert (grid.rows, grid.cols) == (-(-h // stride), -(-w // stride))
    assert (Grid.of(slide, 96).rows, Grid.of(slide, 96).cols) == (16, 12)
    window = cell_patch(slide, Grid.of(slide, 32), 20, 15)
    assert window.shape == (96, 96, 3) and window.dtype == np.uint8


def test_cmu_tissue_mask_keeps_the_tissue_and_drops_the_glass(real_slides):
    slide = open_slide(real_slides / "CMU-1-Small-Region.svs")
    grid = Grid.of(slide, 32)
    tissue = tissue_fraction(slide, grid)
    kept = tissue >= 0.25
    assert 0.25 < kept.mean() < 0.6  # about half the region is glass
    # the left third of the region is glass but for a thin strand of tissue (see the README's picture)
    assert kept[:, : grid.cols // 4].mean() < 0.1
    # a window the mask keeps is stained; a window it drops is white glass
    rows, cols = np.nonzero(kept)
    stained = cell_patch(slide, grid, rows[len(rows) // 2], cols[len(cols) // 2])
    glass = cell_patch(slide, grid, 2, 2)
    assert stained.std() > 20 and glass.mean() > 200 and glass.std() < 15


def test_real_slide_map_and_geojson_lie_inside_the_slide(real_slides, trained_runs, tmp_path):
    slide_map = map_slide([trained_runs / "tiny"], real_slides / "CMU-1-Small-Region.svs", stride=96,
                          out=tmp_path, device="cpu")
    assert slide_map.complete and slide_map.prob.shape == (16, 12)
    assert slide_map.scored == slide_map.meta["total"] > 50
    assert json.loads((slide_map.folder / "cells.geojson").read_text())["type"] == "FeatureCollection"
    every_cell = geojson(slide_map, threshold=0.0)  # the edge cells too, whatever the tiny model says
    points = []
    for feature in every_cell["features"]:
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        points += [p for polygon in polygons for ring in polygon for p in ring]
    points = np.array(points)
    # cut at the slide's edge (2,220 x 2,967 px): the bottom row of cells would reach 2,992
    assert (points >= 0).all() and (points <= np.array([2220, 2967])).all()
    edge = slide_map.cells().eval("y + size").max()
    assert edge > 2967 and points[:, 1].max() == 2967  # a scored cell crossed the edge, and was cut there
    cells = pd.read_csv(slide_map.folder / "cells.csv")
    assert list(cells.columns) == ["row", "col", "x", "y", "size", "tissue", "prob"]
    assert len(cells) == slide_map.scored and cells["size"].iloc[0] == 187  # 96 * 0.972 / 0.499


@pytest.mark.slow
def test_slide_without_a_scale_needs_mpp(real_slides, trained_runs, tmp_path):
    tcga = real_slides / "TCGA-CR-7395-01A-01-TS1.svs"
    cmd = [sys.executable, "-m", "pcam_core", "slide", "--checkpoint", str(trained_runs / "tiny"), "--slide",
           str(tcga), "--stride", "96", "--device", "cpu", "--out", str(tmp_path)]
    failed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert failed.returncode != 0
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mpp" in lines[0] and "Traceback" not in failed.stderr
    done = subprocess.run([*cmd, "--mpp", "0.5"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout
    slide = open_slide(tcga, mpp=0.5)
    assert slide.handle.level_count == 2  # read from the level closest to the model's scale
    assert slide.handle.get_best_level_for_downsample(slide.scale) == 0


# --- the synthetic slide with known tumour -----------------------------------------------------------

@pytest.mark.parametrize("stride", [32, 48, 96])
@pytest.mark.parametrize("factor, pyramid", [(1, True), (2, True), (2, False)])
def test_a_cell_is_the_slide_pixels_there_with_no_shift(tmp_path, stride, factor, pyramid):
    """At PCam's scale a window is the drawn pixels. Scanned at twice the resolution (each pixel doubled)
    it is the same pixels again, whether read from the pyramid's level 1 or from a lone level 0 averaged
    2 x 2: no shift at any level or stride."""
    image, _ = make_slide_image(900, 700, seed=5)
    path = tmp_path / "slide.tif"
    big = image.repeat(factor, 0).repeat(factor, 1)
    if pyramid:
        write_slide(path, big, mpp=PCAM_MPP / factor)
    else:
        res = 1e4 / (PCAM_MPP / factor)
        tifffile.imwrite(path, big, tile=(256, 256), photometric="rgb", compression="zlib",
                         resolution=(res, res), resolutionunit="CENTIMETER")
    slide = open_slide(path)
    grid = Grid.of(slide, stride)
    padded = np.full((700 + 192, 900 + 192, 3), 255, np.uint8)  # glass around the slide
    padded[96:796, 96:996] = image
    for row, col in [(0, 0), (3, 5), (grid.rows - 1, grid.cols - 1), (grid.rows // 2, grid.cols // 3)]:
        x, y = grid.window_origin(row, col)
        expected = padded[96 + y:96 + y + 96, 96 + x:96 + x + 96]
        np.testing.assert_array_equal(cell_patch(slide, grid, row, col), expected)
    # level 0 of the file as tifffile reads it, where a cell of the map says it is
    level0 = tifffile.imread(path, key=0)
    xs, ys, size = grid.cell_box(4, 6)
    cell = cell_patch(slide, grid, 4, 6)[grid.pad:grid.pad + stride, grid.pad:grid.pad + stride]
    np.testing.assert_array_equal(cell.repeat(factor, 0).repeat(factor, 1),
                                  level0[ys:ys + size, xs:xs + size])


@pytest.mark.slow
def test_map_finds_the_known_tumour_and_matches_predict(demo_slide, trained_runs, tmp_path):
    run = trained_runs / "tiny"
    slide_map = map_slide([run], demo_slide, stride=32, out=tmp_path, device="cpu")
    grid = slide_map.grid
    truth = cell_truth(np.load(mask_path(demo_slide))["mask"], grid)
    scored = np.isfinite(slide_map.prob)
    assert truth[scored].sum() > 50 and (~truth[scored]).sum() > 300
    auc = roc_auc_score(truth[scored], slide_map.prob[scored])
    assert auc >= 0.95, f"map AUC {auc:.3f} against the known tumour mask"
    # a cell's value on the map is `predict` on that cell's 96 x 96 window
    slide = open_slide(demo_slide)
    rows, cols = np.nonzero(scored)
    pick = np.random.default_rng(0).choice(len(rows), 6, replace=False)
    windows = np.stack([cell_patch(slide, grid, rows[i], cols[i]) for i in pick])
    direct = predict_images(load(run), windows, device="cpu")["prob"]
    np.testing.assert_allclose(slide_map.prob[rows[pick], cols[pick]], direct, atol=1e-5)


def test_overlay_png_and_cells_have_the_slide_geometry(demo_slide, trained_runs, tmp_path):
    slide_map = map_slide([trained_runs / "tiny"], demo_slide, stride=96, out=tmp_path, device="cpu")
    from PIL import Image

    overlay = Image.open(slide_map.folder / "overlay.png")
    assert overlay.size[0] / overlay.size[1] == pytest.approx(1536 / 1024, rel=0.01)
    cells = pd.read_csv(slide_map.folder / "cells.csv")
    assert (cells["x"] % 96 == 0).all() and (cells["tissue"] >= 0.25).all()
    assert cells["prob"].between(0, 1).all()


def test_stopped_map_keeps_its_cells_and_resumes(demo_slide, trained_runs, tmp_path, monkeypatch):
    import threading

    from pcam_core.slides import maps as slide_map_module

    monkeypatch.setattr(slide_map_module, "CHUNK_CELLS", 200)  # several chunks on this small slide
    stop = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        stop.set()  # stop after the first chunk

    first = map_slide([trained_runs / "tiny"], demo_slide, stride=32, out=tmp_path, device="cpu",
                      progress=progress, stop=stop)
    assert first.meta["state"] == "stopped" and 0 < first.scored < first.meta["total"]
    kept = first.prob.copy()
    final = map_slide([trained_runs / "tiny"], demo_slide, stride=32, out=tmp_path, device="cpu")
    assert final.complete and final.scored == final.meta["total"]
    done = np.isfinite(kept)
    np.testing.assert_array_equal(final.prob[done], kept[done])  # the first run's cells were not redone
    assert job_state(final.folder)["state"] == "finished"


def test_unreadable_region_is_skipped_and_reported(demo_slide, trained_runs, tmp_path, monkeypatch):
    from pcam_core.slides import reader as slide_module

    real_read = slide_module.Slide.read

    def flaky(self, x, y, width, height):
        if 200 <= x < 700 and 200 <= y < 700:
            raise OSError("damaged tile")
        return real_read(self, x, y, width, height)

    monkeypatch.setattr(slide_module.Slide, "read", flaky)
    slide_map = map_slide([trained_runs / "tiny"], demo_slide, stride=96, out=tmp_path, device="cpu",
                          workers=0)
    assert slide_map.meta["failed"] > 0 and slide_map.failed.sum() == slide_map.meta["failed"]
    assert np.isnan(slide_map.prob[slide_map.failed]).all()
    assert slide_map.scored == slide_map.meta["total"] - slide_map.meta["failed"]


@pytest.mark.slow
@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "notes.svs", "is not a slide"),
    (lambda d: d / "missing.svs", "does not exist"),
])
def test_bad_slides_fail_with_one_line(tmp_path, trained_runs, make, expected):
    path = make(tmp_path)
    if path.name == "notes.svs":
        path.write_text("not a slide")
    command = [sys.executable, "-m", "pcam_core", "slide", "--checkpoint", str(trained_runs / "tiny"),
               "--slide", str(path), "--device", "cpu", "--out", str(tmp_path / "maps")]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1 and expected in lines[0], run.stderr


def test_truncated_blank_and_coarse_slides_are_refused(tmp_path, demo_slide, trained_runs):
    truncated = tmp_path / "cut.tif"
    truncated.write_bytes(demo_slide.read_bytes()[: demo_slide.stat().st_size // 3])
    with pytest.raises((ValueError, OSError)):
        map_slide([trained_runs / "tiny"], truncated, stride=96, out=tmp_path / "maps", device="cpu")
    blank = tmp_path / "glass.tif"
    write_slide(blank, np.full((600, 600, 3), 242, np.uint8))
    with pytest.raises(ValueError, match="no tissue"):
        map_slide([trained_runs / "tiny"], blank, stride=96, out=tmp_path / "maps", device="cpu")
    with pytest.raises(ValueError, match="coarser"):
        open_slide(demo_slide, mpp=2.5)


@pytest.mark.slow
def test_torchrun_shards_a_slide_and_rank_0_writes_the_same_map(demo_slide, trained_runs, tmp_path):
    run = trained_runs / "tiny"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "pcam_core", "slide", "--checkpoint", str(run), "--slide", str(demo_slide), "--stride", "96",
               "--precision", "fp32", "--device", "cpu", "--out", str(tmp_path / "two")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished") == 1  # rank 0 alone reports and writes
    two = load_map(next((tmp_path / "two").iterdir()))
    one = map_slide([run], demo_slide, stride=96, out=tmp_path / "one", device="cpu", precision="fp32")
    assert two.complete and two.scored == one.scored
    np.testing.assert_allclose(two.prob, one.prob, atol=1e-5)  # NaN where not tissue, on both


def test_a_plain_image_is_a_slide_with_the_scale_given(tmp_path, trained_runs):
    image, _ = make_slide_image(700, 500, seed=2)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "region.png")
    with pytest.raises(ValueError, match="--mpp"):
        open_slide(tmp_path / "region.png")
    slide = open_slide(tmp_path / "region.png", mpp=PCAM_MPP)
    grid = Grid.of(slide, 96)
    np.testing.assert_array_equal(cell_patch(slide, grid, 1, 2), image[96:192, 192:288])
    slide_map = map_slide([trained_runs / "tiny"], tmp_path / "region.png", stride=96, mpp=PCAM_MPP,
                          out=tmp_path / "maps", device="cpu")
    assert slide_map.complete and slide_map.prob.shape == (6, 8)


def test_a_slide_replaced_by_another_of_the_same_size_and_time_gets_its_own_map(tmp_path):
    from pcam_core.models.registry import Classifier
    from pcam_core.slides.cache import MapSettings, map_dir

    path, other = tmp_path / "slide.tif", tmp_path / "other.tif"
    write_slide(path, make_slide_image(512, 384, seed=1)[0], compression=None)
    write_slide(other, make_slide_image(512, 384, seed=2)[0], compression=None)
    assert path.stat().st_size == other.stat().st_size  # uncompressed: the same size, other pixels
    ckpt = Classifier.new("base_cnn").save(tmp_path / "c.pt")
    before = path.stat()
    first = map_dir(path, [ckpt], MapSettings())
    shutil.copyfile(other, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert map_dir(path, [ckpt], MapSettings()) != first


def declared_slide(path: Path, side: int) -> Path:
    """A pyramid-less tiled TIFF that declares side x side px of pale glass in a few MB (one compressed
    tile written again and again), as a hostile or broken file might."""
    import zlib

    tile = zlib.compress(np.full((512, 512, 3), 240, np.uint8).tobytes(), 9)
    tiles = (-(-side // 512)) ** 2
    tifffile.imwrite(path, data=(tile for _ in range(tiles)), shape=(side, side, 3), dtype="uint8",
                     tile=(512, 512), photometric="rgb", compression="zlib", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    return path


THUMBNAIL_MEMORY = """
import resource, sys
from pcam_core.slides.reader import open_slide
slide = open_slide(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    image, down = slide.thumbnail(2048)
    print("read", image.shape[1], image.shape[0], int(image.mean()))
except ValueError as e:
    print("refused", e)
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow
def test_a_slide_that_declares_a_huge_size_is_read_in_bounded_memory_or_refused(tmp_path):
    big = declared_slide(tmp_path / "big.tif", 12_000)  # 144 Mpx: a whole read would take over 0.5 GB
    done = subprocess.run([sys.executable, "-c", THUMBNAIL_MEMORY, str(big)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["read"] == "2048 2048 240", done.stdout + done.stderr[-2000:]
    assert int(lines["grew_mb"]) < 320, lines  # a few 4096-px regions at a time, not the whole level
    huge = declared_slide(tmp_path / "huge.tif", 40_000)  # 1.6 gigapixels and no pyramid, in 5 MB
    done = subprocess.run([sys.executable, "-c", THUMBNAIL_MEMORY, str(huge)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert "no pyramid level smaller" in lines["refused"] and int(lines["grew_mb"]) < 50, done.stdout


@pytest.mark.slow
def test_a_huge_slide_in_a_folder_does_not_stop_the_slides_after_it(tmp_path, trained_runs):
    folder = tmp_path / "slides"
    folder.mkdir()
    declared_slide(folder / "a-huge.tif", 40_000)
    make_demo_slide(folder / "b-demo.tif", 384, 384, seed=2)
    done = subprocess.run([sys.executable, "-m", "pcam_core", "slide", "--checkpoint",
                           str(trained_runs / "tiny"), "--slide", str(folder), "--stride", "96", "--out",
                           str(tmp_path / "maps"), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "error: a-huge.tif:" in done.stdout and "no pyramid level smaller" in done.stdout
    assert "b-demo.tif: finished" in done.stdout, done.stdout
