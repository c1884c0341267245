"""Slides: a whole-slide image as a tumour map; click a place to see its patch, CAM and give a verdict."""

from datetime import datetime
from pathlib import Path

import numpy as np
import streamlit as st

from app.compute import tiles
from app.widgets import annotations, images, patch_panel, reviews, roots, sidebar, slides, ui, viewer
from pcam_core.review.verdicts import ANSWERS, VERDICTS
from pcam_core.runs import jobs
from pcam_core.slides.cache import job_state
from pcam_core.slides.demo import synthetic_model_warning
from pcam_core.slides.export import THRESHOLD, cell_id
from pcam_core.slides.maps import map_slide
from pcam_core.slides.reader import STRIDES, Grid, MissingScale
from pcam_core.slides.regions import hot_spots

ui.header("Slides", "A whole-slide image scored cell by cell: every 32x32 centre gets P(tumour) from the "
                    "96x96 around it, as PCam labels patches. Click the map to open the patch there.")
ctx = sidebar.context()

# ---- which slide -------------------------------------------------------------------------------------
folders = slides.slide_folders()
pick = st.columns([2, 3, 2])
kept = dict(bind="query-params")  # the slide, its scale and the map's settings: a reload comes back to them
source = pick[0].selectbox("Slides from", [*folders, "A folder I type"], key="slides_source", **kept)
folder = folders.get(source) or pick[0].text_input("Slide folder", key="slides_folder", **kept,
                                                   placeholder="/path/to/slides")
if not folder:
    st.info("Type the path of a folder holding .svs, .tif, .ndpi, .mrxs or other slide files.")
    st.stop()
if source not in folders:
    try:
        folder = str(roots.readable(str(folder)))
    except ValueError as e:
        st.error(str(e))
        st.stop()
try:
    paths = slides.slides_in(str(folder))
except FileNotFoundError as e:
    st.error(f"{e}. Check the path.")
    st.stop()
if not paths:
    st.info(f"{folder} holds no slide files (.svs, .tif, .ndpi, .mrxs, ...).")
    st.stop()
mine = {p for p in paths if reviews.assigned_to_me(f"slide:{Path(p).resolve()}", ctx.user)}
path = pick[1].selectbox("Slide", paths, key="slides_file", **kept,
                         format_func=lambda p: Path(p).name + (" · assigned to you" if p in mine else ""))
slides.scale_of(path)  # a scale typed for one slide is never carried to the next
mpp = pick[2].number_input("Microns per pixel", value=None, min_value=0.05, max_value=20.0, step=0.05,
                           format="%.3f", key="slides_mpp", placeholder="from the file", **kept,
                           on_change=slides.keep_typed_scale, args=(path,),
                           help="Empty: the scale in the slide's metadata. Needed when it has none. A value "
                                "typed here is kept for this slide only.")
try:
    slide = slides.open_cached(path, mpp)
except MissingScale:
    st.error(f"{Path(path).name} has no scale in its metadata: type its microns per pixel in Microns per "
             "pixel above, or take a common one and check it on the viewer's scale bar (a lymphocyte is "
             "about 7 um across).")
    guesses = st.columns(6)
    for column, (value, scan) in zip(guesses, slides.COMMON_SCALES, strict=False):
        column.button(f"{value} um/px ({scan})", key=f"slides_guess_{value}",
                      on_click=slides.keep_typed_scale, args=(path, value))
    st.stop()
except (ValueError, OSError) as e:
    st.error(str(e))
    st.stop()
mtime = Path(path).stat().st_mtime
w, h = slide.size
origin = "typed for this slide" if mpp else "from the file"
st.caption(f"{w:,} x {h:,} px at {slide.mpp:.3f} um/px ({origin}; {slide.handle.level_count} levels); "
           f"the model sees {slide.model_mpp} um/px, so one 96 px patch covers {96 * slide.scale:.0f} px "
           "of the slide.")

opts = st.columns([2, 1, 3])
stride = opts[0].radio("Cell", STRIDES, index=0, horizontal=True, key="slides_stride", **kept,
                       format_func=lambda s: {32: "32 (PCam)", 48: "48", 96: "96 (quick)"}[s],
                       help="32: every centre 32x32 gets its own prediction, as a PCam label means. 96: one "
                            "prediction per 96 px tile, 9x fewer cells.")
tta = opts[1].selectbox("TTA views", (1, 2, 4, 8), key="slides_tta", **kept)
if ctx.run is None:
    st.info("Choose a trained model in the sidebar to score the slide.")
    st.stop()
if st.session_state.get("slides_scale_error"):
    st.warning(st.session_state.pop("slides_scale_error"))
if warning := synthetic_model_warning(ctx.run_data, path):
    st.warning(warning)
tissue = slides.tissue(path, mtime, mpp, stride)
n_cells = int((tissue >= slides.MIN_TISSUE).sum())
settings = slides.settings_for(stride, tta, mpp)
map_folder = slides.map_folder(path, ctx.run, settings)
opts[2].markdown(f"**{n_cells:,}** tissue cells of {tissue.size:,} · model **{ctx.run.name}**")
if n_cells == 0:
    st.warning("No tissue found on this slide (nothing is stained): there is nothing to score.")
    st.stop()


def score_here() -> None:
    bar = st.progress(0.0, text="Scoring...")
    try:
        map_slide([ctx.run], path, stride=stride, tta=tta, mpp=mpp, device=ui.device_spec(),
                  progress=lambda done, total: bar.progress(done / max(total, 1),
                                                            text=f"{done:,} of {total:,} cells"))
    except (ValueError, OSError) as e:
        st.error(f"Scoring failed: {e}")
        st.stop()
    bar.empty()


def start_job() -> None:
    flags = ["--checkpoint", str(ctx.run), "--slide", path, "--stride", str(stride), "--tta", str(tta),
             "--out", str(map_folder.parent), *(["--mpp", str(mpp)] if mpp else [])]
    try:
        jobs.start_slide_map(map_folder, flags, ui.device_spec())
    except (ValueError, OSError) as e:
        st.session_state["slides_job_error"] = str(e)
        return
    reviews.audit("job start", {"job": "slide map", "slide": path, "model": str(ctx.run), "stride": stride})


def stop_job() -> None:
    jobs.stop_slide_map(map_folder)
    reviews.audit("job stop", {"job": "slide map", "slide": path})


@st.fragment(run_every=2)
def job_panel() -> None:
    """The scoring job's progress, Stop and Resume; reruns the page when the map is finished."""
    state = job_state(map_folder)
    if state["state"] in ("running", "starting"):
        share = state["done"] / max(state["total"], 1)
        text = (f"Scoring in the background: {state['done']:,} of {state['total']:,} cells" if state["total"]
                else "Starting the scoring job and finding the tissue...")
        st.progress(share, text=text + " (you can leave this page; the job goes on)")
        st.button("Stop", key="slides_stop", icon=":material/stop:", on_click=stop_job,
                  help="Keeps the cells scored so far; Resume carries on.")
    elif state["state"] in ("stopped", "failed"):
        text = f"Scoring {state['state']} at {state['done']:,} of {state['total']:,} cells."
        (st.error if state["state"] == "failed" else st.info)(
            text + (f" {state['error']}" if state["error"] else ""))
        st.button("Resume", key="slides_resume", icon=":material/replay:", on_click=start_job)
        if state["state"] == "failed" and jobs.log_tail(map_folder):
            st.code(jobs.log_tail(map_folder), language=None)
    previous = st.session_state.get("slides_seen_state")
    st.session_state["slides_seen_state"] = state["state"]
    if previous in ("running", "starting") and state["state"] not in ("running", "starting"):
        st.rerun(scope="app")


slide_map = slides.read_map(map_folder)
if slide_map is None or not slide_map.complete:
    state = job_state(map_folder)["state"]
    if state == "not started":
        work = n_cells * tta
        here = work <= slides.IN_PROCESS_CELLS
        label = "Score this slide" + ("" if here else " in the background")
        if not ctx.user.may("run jobs"):
            st.info("This slide has no map yet: an admin scores slides.")
        elif st.button(label, key="slides_score", type="primary", icon=":material/play_arrow:",
                     help=f"{n_cells:,} cells x {tta} views"):
            if here:
                score_here()
            else:
                start_job()
            st.rerun()
    if st.session_state.get("slides_job_error"):
        st.error(f"Could not start scoring: {st.session_state.pop('slides_job_error')}")
    job_panel()
    if slide_map is None or slide_map.scored == 0:
        st.stop()


# ---- the map ------------------------------------------------------------------------------------------
def pick_cell(row: int, col: int) -> None:
    st.session_state["slides_cell"] = (int(row), int(col), path, stride)
    st.query_params["cell"] = f"{int(row)},{int(col)}"  # the open cell is in the URL


if "slides_cell" not in st.session_state and st.query_params.get("cell", "").count(",") == 1:
    try:  # a reload or a bookmark: the cell of the link, on this slide at this stride
        st.session_state["slides_cell"] = (*map(int, st.query_params["cell"].split(",")), path, stride)
    except ValueError:
        pass


slide_key = f"slide:{Path(path).resolve()}"  # the verdicts' dataset: the slide; their patch id: the window
view = st.columns([1, 3])
threshold = view[0].slider("Threshold P", 0.05, 0.95, THRESHOLD, 0.05, key="slides_threshold", **kept,
                           help="Cells under it are clear on the map; the contour and hot spots follow it.")
tumour_cells = int((slide_map.prob >= threshold).sum())
view[1].markdown(f"{slide_map.scored:,} cells scored · **{tumour_cells:,}** at P >= {threshold:.2f}"
                 + (f" · {slide_map.meta.get('failed', 0):,} unreadable, skipped"
                    if slide_map.meta.get("failed") else ""))
chosen = st.session_state.get("slides_cell")
selected = chosen[:2] if chosen and chosen[2:] == (path, stride) else None
if selected is not None and not (0 <= selected[0] < slide_map.prob.shape[0]
                                 and 0 <= selected[1] < slide_map.prob.shape[1]):
    selected = None  # a link's cell that this map does not have
outlines = annotations.current(path, slide.size)
mode = reviews.blind_mode(slide_key)
marks = viewer.marks(reviews.seen_verdicts(slide_key, ctx.reviewer), slide_map)  # blind: one's own marks
if mode["active"]:
    st.info("Blind review on this slide: other reviewers' verdicts"
            + (" and the model's map, hot spots and P" if mode["hide_model"] else "")
            + " stay hidden" + (" (a blind read of the slide)." if mode["hide_model"] else
                                 " until you have answered a cell."))
drawn = slides.drawn_regions(slide_key)
spots = [] if mode["hide_model"] else hot_spots(slide_map.prob, slide_map.grid, slide.mpp, threshold)
try:
    urls = tiles.offer(slide.path, slide_map.prob)
    if mode["hide_model"]:
        urls = (urls[0], None)  # the slide without its map
    shown = viewer.slide_viewer(urls, slide, slide_map, threshold, selected, marks, drawn, spots,
                                annotations.outline_rings(outlines) if outlines else [])
except ValueError as e:  # the slide cannot be opened for tiles
    st.error(str(e))
    st.stop()
if shown.cell and tuple(shown.cell.values()) != selected:
    pick_cell(shown.cell["row"], shown.cell["col"])
    selected = (int(shown.cell["row"]), int(shown.cell["col"]))
if shown.region:
    slides.keep_region(slide_key, shown.region, ctx.reviewer)
st.caption("Drag to pan, scroll to zoom; click a cell to open its patch below. Keys (click the slide first): "
           "H map on/off, [ and ] opacity, N next hot spot not reviewed, arrows pan, + and - zoom, 0 whole "
           "slide. Hot spots: connected cells at P >= the threshold, by peak P; ticked once a cell in it has "
           "a verdict. Marks: red tumour, green normal, orange unsure; your drawn regions in pink (tumour) "
           "and teal (not tumour).")

if failed_tiles := tiles.unreadable(slide.path):
    st.warning(f"{failed_tiles:,} tiles of this slide could not be read (a damaged file or region): they "
               "show grey, the rest as scanned.")

with st.expander(f"Drawn regions ({len(drawn)})", expanded=False):
    slides.region_table(slide_key, drawn, slide_map, ctx.reviewer)
if ctx.user.may("administer"):
    with st.expander("Assign this slide to a reviewer"):
        reviews.assign_form(slide_key, [""], slide.name, "slides_assign")

with st.expander("Outlines and scores" + (f" ({outlines.source.name})" if outlines else ""),
                 expanded=False):
    if outlines is not None:
        st.caption(annotations.outline_summary(outlines))
        annotations.scores(slide_map, outlines)
    else:
        st.caption("No outlines for this slide: upload a pathologist's QuPath GeoJSON or ASAP XML, or put "
                   f"one named {Path(path).stem}.geojson (or .xml) beside the slide, to score the map "
                   "against it.")
    annotations.upload(path, slide.size)

with st.expander("Top-scoring cells", expanded=False):
    st.caption("The 24 highest P on the slide, each its 96x96 window with the centre 32x32 outlined.")
    prob = np.nan_to_num(slide_map.prob, nan=-1.0)
    order = np.argsort(-prob, axis=None)[:24]
    grid_cols = st.columns(8)
    for i, flat in enumerate(order):
        row, col = divmod(int(flat), slide_map.prob.shape[1])
        with grid_cols[i % 8]:
            st.image(images.with_centre_box(slides.window(path, mtime, mpp, stride, row, col), 1),
                     width="stretch", caption=f"P {slide_map.prob[row, col]:.3f}")
            st.button("Open", key=f"slides_top_{i}", on_click=pick_cell, args=(row, col), width="stretch")

# ---- the chosen cell ----------------------------------------------------------------------------------
def save_verdict(patch: str, verdict: str, p: float, note_key: str) -> None:
    try:
        reviews.review_store().record(slide_key, patch, verdict, ctx.reviewer,
                                 note=st.session_state.get(note_key, ""), checkpoint=str(ctx.run), prob=p,
                                 reviewer_id=ctx.user.id, verified=ctx.user.verified,
                                 blind=reviews.blind_mode(slide_key)["active"])
    except (ValueError, OSError) as e:
        st.session_state["slides_verdict_error"] = f"Not saved: {e} (verdict store: {reviews.review_db()})."
        return
    st.session_state[note_key] = ""
    st.toast(f"Saved: {verdict} on {patch}", icon=":material/check:")


def next_hot_spot(grid: Grid, current: tuple[int, int]) -> None:
    """Opens the highest-scoring cell nobody has given a verdict on yet."""
    reviewed = set(reviews.current_verdicts(slide_key)["patch_id"])
    for flat in np.argsort(-np.nan_to_num(slide_map.prob, nan=-1.0), axis=None):
        row, col = divmod(int(flat), grid.cols)
        if not np.isfinite(slide_map.prob[row, col]):
            break
        if (row, col) != current and cell_id(slide.name, *grid.window_box(row, col)) not in reviewed:
            pick_cell(row, col)
            return
    st.session_state["slides_no_more"] = True


if selected is not None:
    row, col = selected
    grid = slide_map.grid
    x, y, size = grid.window_box(row, col)
    patch = cell_id(slide.name, x, y, size)
    p = float(slide_map.prob[row, col])
    rgb = slides.window(path, mtime, mpp, stride, row, col)
    st.subheader(f"Cell r{row} c{col}")
    st.caption(f"Patch id {patch}: the 96x96 window at level-0 ({x:,}, {y:,}), {size} slide px a side.")
    original, heat, controls = st.columns([4, 4, 3])
    original.image(images.with_centre_box(rgb, patch_panel.SCALE), width="stretch", output_format="PNG",
                   caption="P hidden (blind read)" if mode["hide_model"] else f"on the map: P(tumour) {p:.3f}"
                   if np.isfinite(p) else "not scored: glass or too little tissue")
    history, _ = reviews.seen_history(slide_key, patch, ctx.reviewer)
    if mode["hide_model"]:
        heat.caption("The model's view shows in no blind read of a slide.")
    else:
        patch_panel.model_panel(ctx.run, rgb, "slides", heat, controls, tta)
    st.markdown("**Is there tumour in the centre 32x32?**")
    if len(history):
        last = history.iloc[-1]
        st.caption(f"Current verdict: {last['verdict']} by {ui.as_text(last['reviewer'])}, "
                   f"{last['created'][:16]}"
                   + patch_panel.agreement(last["verdict"], -1, last["prob"]))
    if not ctx.reviewer:
        st.warning("Enter your name as Reviewer in the sidebar to record verdicts.")
    elif not ctx.user.may("review"):
        st.info(f"You are a {ctx.user.role}: you look, you do not answer. An admin can make you a reviewer.")
    if st.session_state.get("slides_verdict_error"):
        st.error(st.session_state.pop("slides_verdict_error"))
    note_key = f"slides_note_{patch}"
    st.text_input("Note (optional)", key=note_key)
    buttons = st.columns(len(VERDICTS) + 3)
    for button, verdict in zip(buttons, VERDICTS, strict=False):
        button.button(ANSWERS[verdict], key=f"slides_verdict_{verdict}",
                      disabled=not ctx.reviewer or not np.isfinite(p) or not ctx.user.may("review"),
                      width="stretch",
                      on_click=save_verdict, args=(patch, verdict, p, note_key))
    buttons[-1].button("Next hot spot", key="slides_next", disabled=mode["hide_model"],
                       icon=":material/arrow_forward:", width="stretch",
                       on_click=next_hot_spot, args=(grid, (row, col)),
                       help="The highest-scoring cell without a verdict yet.")
    if st.session_state.pop("slides_no_more", False):
        st.info("Every scored cell has a verdict.")

# ---- outputs ------------------------------------------------------------------------------------------
with st.expander("Downloads and export"):
    files = st.columns(3)
    outputs = [("cells.csv", "text/csv"), ("cells.geojson", "application/geo+json"),
               ("overlay.png", "image/png")]
    for column, (name, mime) in zip(files, outputs, strict=True):
        file = slide_map.folder / name
        if file.is_file():
            data = slides.regions_download(slide_map, drawn, slide.size) if name == "cells.geojson" else \
                file.read_bytes()
            column.download_button(name, data, file_name=f"{slide.name}-{name}", mime=mime,
                                   key=f"slides_download_{name}", icon=":material/download:")
    st.caption("cells.geojson imports into QuPath (File > Import objects): cells at P >= 0.5 as detections "
               "with P(tumour) as a measurement, tumour regions as annotations and the regions reviewers "
               "drew (Tumor / Normal), in level-0 pixels.")
    default = roots.output_root() / f"export-{slide.name}-{datetime.now():%Y%m%d-%H%M}"
    st.session_state.setdefault("slides_export_dir", str(default))
    target = st.text_input("Export cells as a patch dataset to", key="slides_export_dir",
                           help="A new folder in the Kaggle layout: reviewed cells in train/ with labels "
                                "from the verdicts (else from the drawn regions around them), the top "
                                "unreviewed cells in test/.")
    top = st.number_input("Also the top unreviewed cells", 0, 2000, 48, key="slides_export_top")
    if st.button("Export", key="slides_export", icon=":material/save:", disabled=not ctx.user.may("export"),
                 help=None if ctx.user.may("export") else "Exports are for an admin."):
        try:
            history = reviews.verdict_history(slide_key)
            summary = slides.export(slide, slide_map, history, drawn, int(top), str(roots.writable(target)))
        except (ValueError, OSError) as e:
            st.error(f"Export failed: {e}")
        else:
            reviews.audit("export", {"what": "slide cells", "slide": path, "to": str(summary["folder"]),
                                "reviewed": summary["n_train"], "unreviewed": summary["n_test"]})
            st.success(f"Wrote {summary['n_train']} reviewed and {summary['n_test']} unreviewed cells to "
                       f"{summary['folder']}: open it as a dataset in the sidebar, or train on it.")
