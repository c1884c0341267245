"""A slide's tumour map: a grid of cells, each scored from the 96 x 96 window centred on it.

At `stride` 32 every cell is the centre 32 x 32 of its window, exactly what a PCam label describes; at
stride 96 a cell is the whole window (the quick map). Cells tile the slide without overlapping, so no
prediction overwrites another; TTA views and ensemble members are averaged per cell. Only cells whose
area is tissue (`slide.tissue_mask`) are scored.

Windows are cut from blocks of cells read once at the model's scale (`slide.read_block`), beside the
model: on worker processes where torch leaves cores free (`default_workers`), else on the thread that
feeds the model, so decoding the slide's JPEG or JPEG 2000 tiles overlaps the forward passes. Scoring goes in
chunks: after each one the probabilities so far are handed to `save`, so a stopped or killed run keeps
what it scored and `resume` carries on from there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pcam_core.atomic import file_lock
from pcam_core.data.pack import main_script_hidden, pool_context
from pcam_core.geometry import PATCH
from pcam_core.inference.infer import TTA_VIEWS, Progress, precision_used, predict_rows
from pcam_core.models.distributed import Distributed
from pcam_core.models.registry import Classifier, load, resolve_device
from pcam_core.runs.folder import checkpoint_file, read_json
from pcam_core.slides.cache import MapSettings, SlideMap, load_map, map_dir, save_arrays, write_meta
from pcam_core.slides.demo import synthetic_model_warning
from pcam_core.slides.export import write_outputs
from pcam_core.slides.reader import (
    MIN_TISSUE,
    STRIDES,
    Grid,
    Slide,
    open_slide,
    read_block,
    tissue_mask,
)

log = logging.getLogger(__name__)

CHUNK_CELLS = 2048  # cells scored between two saves of the partial map


def tissue_fraction(slide: Slide, grid: Grid) -> np.ndarray:
    """(rows, cols) float32: the share of each cell that is tissue, measured on a thumbnail."""
    cell_px = grid.stride * grid.scale  # level-0 pixels per cell
    side = min(8192, max(2048, math.ceil(max(slide.size) * 4 / cell_px)))  # 4+ mask pixels per cell
    thumb, down = slide.thumbnail(side)
    mask = tissue_mask(thumb).astype(np.float64)
    total = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    total[1:, 1:] = mask.cumsum(0).cumsum(1)  # summed-area table: any box's tissue in four lookups
    ys = np.clip(np.round(np.arange(grid.rows + 1) * cell_px / down).astype(int), 0, mask.shape[0])
    xs = np.clip(np.round(np.arange(grid.cols + 1) * cell_px / down).astype(int), 0, mask.shape[1])
    y0, y1 = ys[:-1, None], np.maximum(ys[1:], ys[:-1] + 1)[:, None].clip(max=mask.shape[0])
    x0, x1 = xs[None, :-1], np.maximum(xs[1:], xs[:-1] + 1)[None, :].clip(max=mask.shape[1])
    area = np.maximum((y1 - y0) * (x1 - x0), 1)
    inside = total[y1, x1] - total[y0, x1] - total[y1, x0] + total[y0, x0]
    return (inside / area).astype(np.float32)


def block_tasks(grid: Grid, cells: np.ndarray) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
    """The reads that cover `cells` (K, 2) (row, col): per block, its box in model pixels, its cells
    (flat indices row * cols + col) and their windows' offsets inside the block.

    A block's box is always the whole block, however few of its cells are wanted, so that a cell's window
    is cut from the same pixels (and the same resampling) whichever cells were read with it."""
    b = grid.block_cells
    tasks = []
    keys = (cells[:, 0] // b) * (grid.cols // b + 1) + cells[:, 1] // b
    order = np.argsort(keys, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
        rows, cols = cells[group, 0], cells[group, 1]
        tasks.append((block_box(grid, rows[0], cols[0]), rows * grid.cols + cols,
                      np.column_stack([cols % b * grid.stride, rows % b * grid.stride])))
    return tasks


def block_box(grid: Grid, row: int, col: int) -> tuple[int, int, int, int]:
    """(x, y, width, height) in model pixels of the block holding cell (row, col), windows included."""
    b = grid.block_cells
    r0, c0 = row // b * b, col // b * b
    r1, c1 = min(r0 + b, grid.rows), min(c0 + b, grid.cols)
    x, y = grid.window_origin(r0, c0)
    return x, y, (c1 - c0) * grid.stride + 2 * grid.pad, (r1 - r0) * grid.stride + 2 * grid.pad


def cell_patch(slide: Slide, grid: Grid, row: int, col: int) -> np.ndarray:
    """(96, 96, 3) uint8: cell (row, col)'s window, cut from its block exactly as the map's scoring cut it."""
    if not (0 <= row < grid.rows and 0 <= col < grid.cols):
        raise ValueError(f"cell ({row}, {col}) is outside the {grid.rows} x {grid.cols} grid")
    b = grid.block_cells
    region = slide.read(*block_box(grid, row, col))
    ox, oy = col % b * grid.stride, row % b * grid.stride
    return region[oy:oy + PATCH, ox:ox + PATCH]


def default_workers(device_type: str) -> int:
    """Reading processes, from the cores this process may use and the threads torch runs on them.

    On a CPU the model's threads take the cores torch was given; a reading process only pays where some
    are left over (the machine's own split, e.g. `torch.set_num_threads` or a shared box), else blocks
    are read on the thread that feeds the model, between its batches (measured in BENCHMARKS.md
    "Slides"). On a GPU the cores are free to decode: up to 8 processes.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device_type == "cpu":
        return max(0, min(8, cores - torch.get_num_threads()))
    return max(1, min(8, cores - 2))


class _Windows:
    """The windows of `tasks` in order, read `ahead` blocks in advance on `pool` (or here without one)."""

    def __init__(self, slide: Slide, tasks: list, pool: Executor | None, ahead: int):
        self.slide, self.tasks, self.pool, self.ahead = slide, tasks, pool, ahead
        self.pending: deque[Future | np.ndarray | str] = deque()
        self.next_task = 0
        self.buffer = np.empty((0, PATCH, PATCH, 3), np.uint8)
        self.failed: list[np.ndarray] = []  # flat cell indices of blocks that could not be read

    def _submit(self) -> None:
        while self.next_task < len(self.tasks) and len(self.pending) < self.ahead:
            box = self.tasks[self.next_task][0]
            args = (str(self.slide.path), self.slide.mpp, self.slide.model_mpp, box)
            self.pending.append(self.pool.submit(read_block, *args) if self.pool else read_block(*args))
            self.next_task += 1

    def take(self, n: int) -> np.ndarray:
        """The next `n` windows; a block that could not be read gives white windows, its cells noted."""
        parts = [self.buffer]
        have = len(self.buffer)
        while have < n:
            self._submit()
            done = self.next_task - len(self.pending)
            result = self.pending.popleft()
            result = result.result() if isinstance(result, Future) else result
            _, cells, offsets = self.tasks[done]
            if isinstance(result, str):
                log.warning("%s: %d cells skipped: %s", self.slide.name, len(cells), result)
                self.failed.append(cells)
                result = np.full((len(offsets), PATCH, PATCH, 3), 255, np.uint8)
            else:  # the block's windows, cut here: 9x less to send between processes at stride 32
                result = np.stack([result[y:y + PATCH, x:x + PATCH] for x, y in offsets])
            parts.append(result)
            have += len(result)
        block = np.concatenate(parts)
        self.buffer = block[n:]
        return block[:n]


def score_slide(classifiers: Sequence[Classifier], slide: Slide, grid: Grid, tissue: np.ndarray,
                prob: np.ndarray | None = None, tta: int = 1, device="auto", precision: str = "auto",
                batch_size: int | None = None, workers: int | None = None, min_tissue: float = MIN_TISSUE,
                shard: Callable[[np.ndarray], np.ndarray] = lambda cells: cells,
                save: Callable[[np.ndarray, np.ndarray], None] | None = None,
                stop: threading.Event | None = None, progress: Progress | None = None) -> dict:
    """Scores the tissue cells of `grid` not yet in `prob`, in chunks.

    Args:
        prob: (rows, cols) float32 from an earlier, stopped run (NaN: not scored yet), or None.
        shard: picks this process's share of the cells to score (torchrun).
        save: called as save(prob, failed) after each chunk with the map so far.
        stop: when set, scoring ends after the current chunk.

    Returns:
        dict with "prob" (rows, cols) float32 (NaN where not tissue or not scored), "failed" (rows, cols)
        bool (cells whose region could not be read) and "complete" (every tissue cell tried).
    """
    prob = np.full((grid.rows, grid.cols), np.nan, np.float32) if prob is None else prob.copy()
    failed = np.zeros(prob.shape, bool)
    todo = shard(np.argwhere((tissue >= min_tissue) & np.isnan(prob)))
    dev = resolve_device(device)
    workers = default_workers(dev.type) if workers is None else workers
    tasks = block_tasks(grid, todo) if len(todo) else []
    total, done = len(todo), 0
    pool = None
    if workers > 0 and tasks:
        with main_script_hidden():
            pool = ProcessPoolExecutor(workers, mp_context=pool_context())
    try:
        windows = _Windows(slide, tasks, pool, ahead=2 * workers + 2 if pool else 1)
        for chunk in _chunks(tasks):
            if stop is not None and stop.is_set():
                break
            cells = np.concatenate([t[1] for t in chunk])
            out = predict_rows(classifiers, partial(_take, windows, len(cells)), len(cells), tta, dev,
                               batch_size, precision, None)
            prob.flat[cells] = out["prob"]
            for bad in windows.failed:
                prob.flat[bad], failed.flat[bad] = np.nan, True
            windows.failed.clear()
            done += len(cells)
            if save is not None:
                save(prob, failed)
            if progress is not None:
                progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {"prob": prob, "failed": failed, "complete": done == total}


def _chunks(tasks: list) -> Iterator[list]:
    """Runs of whole blocks of about CHUNK_CELLS cells: the unit between two saves of the map."""
    first = 0
    while first < len(tasks):
        last, cells = first + 1, len(tasks[first][1])
        while last < len(tasks) and cells + len(tasks[last][1]) <= CHUNK_CELLS:
            cells += len(tasks[last][1])
            last += 1
        yield tasks[first:last]
        first = last


def _take(windows: _Windows, n: int, start: int, stop: int) -> np.ndarray:
    return windows.take(min(stop, n) - start)  # the last batch asks past the chunk's end


def map_slide(checkpoints: Sequence, slide_path, stride: int = 32, tta: int = 1, mpp: float | None = None,
              out=None, device="auto", precision: str = "auto", min_tissue: float = MIN_TISSUE,
              workers: int | None = None, batch_size: int | None = None, progress: Progress | None = None,
              stop: threading.Event | None = None) -> SlideMap:
    """Scores a slide into its map folder (`slide_cache.map_dir`), or returns the finished map there.

    A partial map left by a stopped or killed run is carried on from. Under torchrun every rank scores
    every world-th block of cells; rank 0 writes the map.

    Raises:
        ValueError: a bad slide, scale, checkpoint or setting; a slide with no tissue; the same map being
            scored by another process.
    """
    _check_options(stride, tta, min_tissue, workers, batch_size)
    classifiers = [load(c) for c in checkpoints]
    scales = {c.mpp for c in classifiers}
    if len(scales) > 1:
        raise ValueError(f"the ensemble's models were trained at different scales ({sorted(scales)} um/px)")
    slide = open_slide(slide_path, mpp, scales.pop())
    warning = next(filter(None, (synthetic_model_warning(c.config.get("data"), slide_path)
                                 for c in classifiers)), None)
    if warning:
        log.warning(warning)
    try:
        ctx = Distributed(device)
        settings = MapSettings(stride, tta, mpp, min_tissue, precision_used(precision, ctx.device))
        folder = map_dir(slide.path, list(checkpoints), settings, out)
        existing = load_map(folder)
        if existing is not None and existing.complete:
            return existing
        grid = Grid.of(slide, stride)
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / ".lock", wait=False) if ctx.main else contextlib.nullcontext(True) as mine:
            if not mine:
                raise ValueError(f"{slide.path.name} is being scored with these settings by another process; "
                                 f"wait for it (its progress: {folder / 'meta.json'})")
            tissue = existing.tissue if existing is not None else tissue_fraction(slide, grid)
            meta = {"slide": str(slide.path), "size": list(slide.size), "mpp": slide.mpp,
                    "model_mpp": slide.model_mpp, "scale": slide.scale, "rows": grid.rows, "cols": grid.cols,
                    **asdict(settings), "checkpoints": [str(checkpoint_file(c)) for c in checkpoints],
                    "total": int((tissue >= min_tissue).sum()), "pid": os.getpid(), "started": time.time()}
            if meta["total"] == 0:
                raise ValueError(f"{slide.path.name} shows no tissue (no cell is {min_tissue:.0%} tissue by "
                                 "colour saturation); check the file, or lower --min-tissue")
            opts = dict(tta=tta, precision=precision, batch_size=batch_size, workers=workers, stop=stop,
                        progress=progress)
            _score_into(folder, meta, classifiers, slide, grid, tissue, existing, ctx, opts)
        return ctx.same(load_map(folder) if ctx.main else None)
    finally:
        slide.close()


def _check_options(stride: int, tta: int, min_tissue: float, workers: int | None, batch_size: int | None
                   ) -> None:
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES} model pixels, got {stride}")
    if tta not in TTA_VIEWS:
        raise ValueError(f"tta must be one of {TTA_VIEWS}, got {tta}")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"--min-tissue is a share of a cell between 0 and 1, got {min_tissue}")
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be 0 (read in this process) or more, got {workers}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be a positive number of windows, got {batch_size}")


def _score_into(folder: Path, meta: dict, classifiers: list, slide: Slide, grid: Grid, tissue: np.ndarray,
                existing: SlideMap | None, ctx: Distributed, opts: dict) -> None:
    """Scores the map's missing cells, saving after each chunk (rank 0), then writes its outputs."""
    def save(prob: np.ndarray, failed: np.ndarray, state: str = "running", **extra) -> None:
        save_arrays(folder, prob=prob, failed=failed)
        write_meta(folder, {**meta, "state": state, "done": int(np.isfinite(prob).sum()),
                            "failed": int(failed.sum()), **extra})

    prob = existing.prob if existing is not None else np.full(tissue.shape, np.nan, np.float32)
    if ctx.main:
        save_arrays(folder, tissue=tissue)
        save(prob, np.zeros(tissue.shape, bool))
    try:
        result = score_slide(classifiers, slide, grid, tissue, prob, device=ctx.device,
                             min_tissue=meta["min_tissue"], shard=ctx.shard,
                             save=save if ctx.main and ctx.world == 1 else None, **opts)
    except BaseException as e:
        if ctx.main:
            stopped = not isinstance(e, Exception)  # Ctrl-C, or the app's script stopped by its user
            write_meta(folder, {**read_json(folder / "meta.json"), "error": "" if stopped else str(e) or
                                type(e).__name__, "state": "stopped" if stopped else "failed"})
        raise
    parts = ctx.gather(result)
    prob, failed = parts[0]["prob"], np.logical_or.reduce([p["failed"] for p in parts])
    for part in parts[1:]:
        prob = np.where(np.isfinite(prob), prob, part["prob"])
    if ctx.main:
        complete = all(p["complete"] for p in parts)
        save(prob, failed, "finished" if complete else "stopped",
             seconds=round(time.time() - meta["started"], 1))
        if complete:
            write_outputs(load_map(folder), *slide.thumbnail(2048))
