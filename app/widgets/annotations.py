"""The Slides page's annotations: a pathologist's outlines found beside the slide (tumor_001.xml for
tumor_001.tif) or uploaded and kept with the slide's maps, drawn on the map, and the map scored against
them as Camelyon16 scored maps."""

from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import streamlit as st

from pcam_core.slides.annotations import ANNOTATION_SUFFIXES, Annotations, annotation_for, read_annotations
from pcam_core.slides.cache import SlideMap, slides_root
from pcam_core.slides.evaluate import FROC_RATES, cell_metrics, froc, score_map


def kept_folder(slide_path: str) -> Path:
    """Where outlines uploaded for a slide are kept: beside its maps, in the slide folder's cache."""
    return slides_root(slide_path) / "annotations"


def find(slide_path: str) -> Path | None:
    """The slide's outlines: an upload kept for it, else a file named after it beside it."""
    slide = Path(slide_path)
    return annotation_for(slide, kept_folder(slide_path)) or annotation_for(slide, slide.parent)


@st.cache_data(show_spinner=False, max_entries=16)
def load(path: str, mtime: float) -> Annotations:
    return read_annotations(path)


def current(slide_path: str, size: tuple[int, int]) -> Annotations | None:
    """The slide's outlines, read and checked against its size; errors end up on the page, not in a trace."""
    path = find(slide_path)
    if path is None:
        return None
    try:
        outlines = load(str(path), path.stat().st_mtime)
        outlines.check_fits(size, Path(slide_path).name)
    except (ValueError, OSError) as e:
        st.error(f"The outlines in {path.name} cannot be used: {e}")
        return None
    return outlines


def outline_rings(outlines: Annotations) -> list[dict]:
    """The tumour outlines and exclusions as rings of level-0 points for the viewer (simplified to within
    a level-0 pixel or two, so a detailed outline stays small)."""
    rings = []
    for geometry, kind in ((outlines.tumour, "outline"), (outlines.exclusion, "exclusion")):
        for polygon in getattr(geometry, "geoms", [geometry]):
            if polygon.is_empty or polygon.geom_type != "Polygon":
                continue
            outer = shapely.Polygon(polygon.exterior).area
            holes = [r for r in polygon.interiors if shapely.Polygon(r).area >= 0.01 * outer]  # not specks
            for ring in [polygon.exterior, *holes]:
                xy = np.asarray(ring.simplify(1.5).coords).round(1)
                rings.append({"kind": kind, "points": xy.tolist()})
    return rings


def upload(slide_path: str, size: tuple[int, int]) -> None:
    """An uploader for the slide's outlines; a file that reads and fits the slide is kept, replacing an
    earlier upload for it."""
    file = st.file_uploader("Outlines for this slide (QuPath GeoJSON or ASAP XML)", key="slides_outlines",
                            type=[s.lstrip(".") for s in ANNOTATION_SUFFIXES])
    if file is None or st.session_state.get("slides_outlines_kept") == file.file_id:
        return
    folder, stem = kept_folder(slide_path), Path(slide_path).stem
    suffix = Path(file.name).suffix.lower()
    staged = folder / f".upload{suffix}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(file.getvalue())
        read_annotations(staged).check_fits(size, Path(slide_path).name)
        for old in ANNOTATION_SUFFIXES:  # this slide's earlier upload, whatever its kind, and nothing else
            (folder / f"{stem}{old}").unlink(missing_ok=True)
        staged.replace(folder / f"{stem}{suffix}")
    except (ValueError, OSError) as e:
        staged.unlink(missing_ok=True)
        st.error(f"{file.name} was not kept: {str(e).replace('.upload', Path(file.name).stem)}")
        return
    st.session_state["slides_outlines_kept"] = file.file_id
    st.rerun()


@st.cache_data(show_spinner="Scoring the map against the outlines...", max_entries=16)
def _scores(map_folder: str, map_mtime: float, outline: str, outline_mtime: float) -> tuple[dict, dict, dict]:
    """The map in `map_folder` against the outlines in `outline`: its row of the per-slide table, the cell
    metrics and this slide's FROC (kept per map and outline file and their times)."""
    from pcam_core.slides.cache import load_map

    slide_map = load_map(map_folder)
    cells, row, lesions = score_map(slide_map, read_annotations(outline))
    return row, cell_metrics(cells["label"].to_numpy(), cells["prob"].to_numpy()), froc([lesions])


def scores(slide_map: SlideMap, outlines: Annotations) -> None:
    """The map against the outlines: cells, the slide's score, and the lesions found (this slide's FROC)."""
    if not slide_map.complete:
        st.caption("Scores appear when the map is finished.")
        return
    meta = slide_map.folder / "meta.json"
    try:
        row, metrics, found = _scores(str(slide_map.folder), meta.stat().st_mtime, str(outlines.source),
                                      outlines.source.stat().st_mtime)
    except (ValueError, OSError) as e:
        st.error(f"The map cannot be scored against {outlines.source.name}: {e}")
        return
    rows = [("cells scored (tumour by the outlines)", f"{row['cells']:,} ({row['tumour_cells']:,})"),
            ("cell ROC AUC (95% interval)", _with_ci(metrics["roc_auc"], metrics["roc_auc_ci"])),
            ("cell PR AUC (95% interval)", _with_ci(metrics["pr_auc"], metrics["pr_auc_ci"])),
            ("slide score (highest cell P)", f"{row['score']:.3f}"),
            ("lesions found", f"{row['lesions_found']} of {row['lesions']}"),
            ("false-positive detections", f"{row['false_positives']:,}"),
            ("FROC on this slide (1/4 to 8 FP)",
             "n/a" if np.isnan(found["score"]) else f"{found['score']:.3f}")]
    table = pd.DataFrame(rows, columns=["measure", "value"])
    st.dataframe(table, hide_index=True, key="slides_scores")
    rates = ", ".join(f"{r:g}" for r in FROC_RATES)
    st.caption("A cell is tumour when its centre 32x32 overlaps the tumour outline (PCam's rule); a lesion "
               "is found when a local maximum of the map lies within 75 um of it (Camelyon16). Over a "
               f"folder of slides: `python -m pcam_core slide-eval` (FROC at {rates} false positives per "
               "slide).")


def _with_ci(value: float, ci: list) -> str:
    return "n/a (one class only)" if np.isnan(value) else f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def outline_summary(outlines: Annotations) -> str:
    parts = [f"Outlines from {outlines.source.name}: {shapely.area(outlines.tumour):,.0f} px² of tumour"]
    if outlines.repaired:
        parts.append(f"{outlines.repaired} self-crossing polygon(s) repaired")
    if outlines.skipped:
        parts.append(f"{outlines.skipped} outline(s) of other classes skipped")
    return "; ".join(parts) + "."
