"""Tumour maps scored against a pathologist's outlines, as the Camelyon16 challenge scored them.

Exclusions: a cell whose centre lies in one is left out of the cell metrics; for the FROC an exclusion is
tissue that is not tumour, as in Camelyon16's evaluation mask, so a detection there is a false positive.

- Cells: every scored cell labelled by PCam's rule (`annotations.cell_labels`); ROC AUC and PR AUC over
  the cells of all slides, with percentile bootstrap intervals.
- Slides: a slide's score is its highest cell P (or, with `top_k`, the mean of its k highest); a slide is
  tumour when its outlines hold any tumour. ROC AUC over the slides.
- Lesions (FROC): the detections are the local maxima of each map (a cell at least as high as its 8
  neighbours), at the cell's centre. A lesion is a connected part of the tumour grown by 75 um, as
  Camelyon16's evaluation mask was made. A detection inside a lesion is a true positive for that lesion,
  counted once at its highest P; any other is a false positive, except inside an isolated-tumour-cell
  lesion (its tumour under 200 um along its longest axis), which counts neither way. The sensitivity at
  1/4, 1/2, 1, 2, 4 and 8 false positives per slide is read off the curve by linear interpolation, as the
  challenge's own script did, and their mean is the FROC score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from pcam_core.geometry import PCAM_MPP
from pcam_core.inference.metrics import auc_ci, pr_auc, pr_auc_ci, roc_auc
from pcam_core.slides.annotations import Annotations, cell_labels, longest_axis
from pcam_core.slides.reader import MIN_TISSUE

log = logging.getLogger(__name__)
FROC_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DILATION_UM = 75.0
ITC_UM = 200.0


@dataclass
class SlideLesions:
    """One slide's part of the FROC: the best P on each lesion (-inf when missed) and the false positives."""

    hits: np.ndarray  # (lesions,) float
    false_positives: np.ndarray  # (n,) float: P of each detection outside every lesion


def slide_score(probs: np.ndarray, top_k: int | None = None) -> float:
    """The slide's P(tumour): its highest cell P, or the mean of its `top_k` (1 or more) highest."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be 1 or more, got {top_k}")
    probs = np.sort(np.asarray(probs, np.float64)[np.isfinite(probs)])[::-1]
    if not len(probs):
        return float("nan")
    return float(probs[0] if not top_k else probs[:top_k].mean())


def local_maxima(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the cells of a map at least as high as each of their 8 neighbours."""
    from scipy.ndimage import maximum_filter

    filled = np.where(np.isfinite(prob), prob, -np.inf)
    peaks = (filled == maximum_filter(filled, size=3, mode="constant", cval=-np.inf)) & np.isfinite(prob)
    return np.nonzero(peaks)


def match_lesions(x: np.ndarray, y: np.ndarray, p: np.ndarray, annotations: Annotations | None,
                  mpp: float) -> SlideLesions:
    """Detections at level-0 (x, y) with P `p`, against the slide's lesions: the connected parts of its
    tumour grown by DILATION_UM (so outlines closer than twice that are one lesion, as in Camelyon16)."""
    points = shapely.points(x, y)
    inside_any = np.zeros(len(p), bool)
    hits = []
    tumour = annotations.tumour if annotations is not None else shapely.Polygon()
    grown = tumour.buffer(DILATION_UM / mpp) if not tumour.is_empty else tumour
    for lesion in [g for g in getattr(grown, "geoms", [grown]) if not g.is_empty]:
        inside = shapely.within(points, lesion)
        inside_any |= inside
        if longest_axis(lesion.intersection(tumour)) * mpp < ITC_UM:  # isolated tumour cells: neither way
            continue
        hits.append(p[inside].max() if inside.any() else -np.inf)
    return SlideLesions(np.asarray(hits, np.float64), np.asarray(p[~inside_any], np.float64))


def froc(slides: list[SlideLesions]) -> dict:
    """Sensitivity against false positives per slide, and the FROC score (mean over FROC_RATES)."""
    hits = np.concatenate([s.hits for s in slides]) if slides else np.zeros(0)
    false = np.concatenate([s.false_positives for s in slides]) if slides else np.zeros(0)
    if not len(hits):
        return {"lesions": 0, "sensitivity": dict.fromkeys(map(str, FROC_RATES), float("nan")),
                "score": float("nan")}
    thresholds = np.unique(np.concatenate([hits[np.isfinite(hits)], false]))
    fps = np.array([(false >= t).sum() for t in thresholds] + [0]) / len(slides)
    sens = np.array([(hits >= t).sum() for t in thresholds] + [0]) / len(hits)
    best = pd.Series(sens).groupby(fps).max()  # one operating point per false-positive rate: the best
    at = np.interp(FROC_RATES, best.index.to_numpy(), best.to_numpy())
    sensitivity = {str(rate): float(s) for rate, s in zip(FROC_RATES, at, strict=True)}
    return {"lesions": int(len(hits)), "sensitivity": sensitivity, "score": float(at.mean())}


def cell_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """ROC AUC and PR AUC of cells with their 95% bootstrap intervals (NaN without both classes)."""
    if len(np.unique(labels)) < 2:
        nan = float("nan")
        return {"cells": int(len(labels)), "tumour_cells": int(np.sum(labels)), "roc_auc": nan,
                "roc_auc_ci": [nan, nan], "pr_auc": nan, "pr_auc_ci": [nan, nan]}
    return {"cells": int(len(labels)), "tumour_cells": int(np.sum(labels)),
            "roc_auc": roc_auc(labels, probs), "roc_auc_ci": list(auc_ci(labels, probs)),
            "pr_auc": pr_auc(labels, probs), "pr_auc_ci": list(pr_auc_ci(labels, probs))}


def slide_metrics(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC over slides (NaN unless there are tumour and tumour-free slides)."""
    return roc_auc(truth, scores) if len(np.unique(truth)) == 2 else float("nan")


def score_map(slide_map, annotations: Annotations | None, top_k: int | None = None
              ) -> tuple[pd.DataFrame, dict, SlideLesions]:
    """One slide's map against its outlines (None: a tumour-free slide): its scored cells with their labels,
    its row of the per-slide table, and its part of the FROC."""
    grid, meta = slide_map.grid, slide_map.meta
    name = Path(meta.get("slide", slide_map.folder.name)).name
    if annotations is not None:
        annotations.check_fits(tuple(meta["size"]), name)
    outlines = annotations or Annotations(slide_map.folder, shapely.Polygon(), shapely.Polygon())  # none
    cells = cell_labels(grid, outlines, slide_map.tissue, meta.get("min_tissue", MIN_TISSUE))
    cells["prob"] = slide_map.prob[cells["row"], cells["col"]]
    cells = cells[np.isfinite(cells["prob"])].reset_index(drop=True)
    rows, cols = local_maxima(slide_map.prob)
    x, y, size = grid.cell_box(rows, cols)
    mpp = meta.get("model_mpp", PCAM_MPP) / meta["scale"]  # um per level-0 px (meta's "mpp": the typed one)
    lesions = match_lesions(x + size / 2, y + size / 2, slide_map.prob[rows, cols], annotations, mpp)
    tumour = annotations is not None and not annotations.tumour.is_empty
    row = {"slide": name, "annotated": annotations is not None, "tumour": int(tumour),
           "score": slide_score(cells["prob"].to_numpy(), top_k), "cells": len(cells),
           "tumour_cells": int(cells["label"].sum()), "lesions": len(lesions.hits),
           "lesions_found": int(np.isfinite(lesions.hits).sum()),
           "false_positives": int(len(lesions.false_positives))}
    return cells, row, lesions


def evaluate_maps(maps_and_outlines: list, top_k: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Maps (each with its outlines, or None for a tumour-free slide) scored together: the per-slide table
    and the summary (cells, slides, FROC)."""
    if not maps_and_outlines:
        raise ValueError("no slide maps to evaluate")
    scored = [score_map(m, a, top_k) for m, a in maps_and_outlines]
    table = pd.DataFrame([row for _, row, _ in scored])
    blank = table["score"].isna()  # no cell scored: no slide score, left out of the slide AUC
    if blank.any():
        log.warning("no scored cell on %s: left out of the slide ROC AUC",
                    ", ".join(table.loc[blank, "slide"]))
    cells = pd.concat([c for c, _, _ in scored], ignore_index=True)
    summary = {"slides": len(table), "tumour_slides": int(table["tumour"].sum()),
               "slide_score": f"mean of the top {top_k} cells" if top_k else "highest cell P",
               "cell": cell_metrics(cells["label"].to_numpy(), cells["prob"].to_numpy()),
               "slide_roc_auc": slide_metrics(table.loc[~blank, "tumour"].to_numpy(),
                                              table.loc[~blank, "score"].to_numpy()),
               "froc": froc([lesions for _, _, lesions in scored])}
    return table, summary
