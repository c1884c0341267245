"""Inspect: one patch large, the model's prediction per TTA view, Grad-CAM, and the reviewer's verdict."""

import sqlite3

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import images, sidebar, ui
from pcam_core.cam import METHODS, TARGETS, centre_focus, overlay
from pcam_core.data import PatchStore
from pcam_core.review import VERDICTS

SCALE = 4  # 96 px -> 384 px on screen
VIEW_NAMES = ["original", "rot 90", "rot 180", "rot 270", "flip", "flip + rot 90", "flip + rot 180",
              "flip + rot 270"]

ui.header("Inspect", "A patch at 4x with its centre 32x32 outlined, what the model says under each flip and "
                     "rotation, where it looks (CAM), and your verdict on whether tumour lies in the centre.")
ctx = sidebar.context()
sidebar.warn_if_other_data(ctx)
store = ctx.store


def go_to_patch(index: int) -> None:
    st.session_state["inspect_index"] = int(index)


def go_to_typed_id(store: PatchStore) -> None:
    """Callback of the id box: jump to that patch, outside any filter."""
    typed = st.session_state.get("inspect_goto", "").strip()
    st.session_state["inspect_goto"] = ""
    if not typed:
        return
    try:
        st.session_state["inspect_index"] = int(store.index_of([typed])[0])
        st.session_state["inspect_order"] = None
    except ValueError as e:
        st.session_state["inspect_goto_error"] = str(e)


def save_verdict(patch_id: str, verdict: str, note_key: str, prob: float | None) -> None:
    """Callback of the verdict buttons: appends the verdict at once and confirms it."""
    try:
        ui.review_store().record(ctx.dataset_key, patch_id, verdict, ctx.reviewer,
                                 note=st.session_state.get(note_key, ""),
                                 checkpoint=str(ctx.run) if ctx.run else "", prob=prob)
    except (ValueError, OSError, sqlite3.Error) as e:  # a read-only or full verdict store, no reviewer name
        # the note stays in its box and the buttons stay: nothing the reviewer typed is lost
        st.session_state["verdict_error"] = (f"The verdict was not saved: {e}. The verdict store is "
                                             f"{ui.review_db()}: free disk space there, or point "
                                             f"PCAM_REVIEW_DB at a writable file.")
        return
    st.session_state[note_key] = ""  # saved with this verdict: it must not ride along with the next one
    st.toast(f"Saved: {verdict} on {patch_id[:12]}", icon=":material/check:")


@st.fragment
def cam_view(rgb: np.ndarray, cam: np.ndarray, key: str) -> None:
    """The overlay alone reruns when the opacity or colours change: the map is not recomputed."""
    alpha = st.session_state.get(f"{key}_alpha", 0.45)
    colormap = st.session_state.get(f"{key}_cmap", "jet")
    st.image(images.upscale(overlay(rgb, cam, alpha=alpha, colormap=colormap), SCALE), width="stretch",
             output_format="PNG",
             caption="CAM over the patch: warm colours mark the evidence for the target")
    row = st.columns(2)
    row[0].slider("Opacity", 0.0, 1.0, 0.45, 0.05, key=f"{key}_alpha")
    row[1].selectbox("Colours", ["jet", "inferno", "viridis"], key=f"{key}_cmap")


def model_panel(rgb: np.ndarray, key: str, image_col, control_col) -> float | None:
    """Prediction per TTA view and CAM controls in `control_col`, the overlay in `image_col`;
    returns P(tumour), None without a model."""
    if ctx.run is None:
        control_col.info("Choose a trained model in the sidebar to see its prediction and CAM.")
        return None
    run, mtime = ui.model_key(ctx.run)
    views = ui.tta_views(run, mtime, rgb)
    with control_col:
        cols = st.columns(2)
        cols[0].metric("P(tumour)", f"{views.mean():.3f}", help="Mean over the 8 flips and rotations.")
        cols[1].metric("Spread over views", f"{views.std():.3f}")
        # the views in their own order, the original on top, on a fixed 0-1 axis: a rescaled axis made
        # 0.004 look like certainty
        bars = go.Figure(go.Bar(x=views.tolist(), y=VIEW_NAMES, orientation="h", marker_color="#3F6FA0",
                                hovertemplate="%{y}: P(tumour) %{x:.3f}<extra></extra>"))
        bars.update_layout(height=250, margin=dict(t=10, b=10, l=10, r=10), xaxis_range=[0, 1],
                           xaxis_title="P(tumour)", yaxis_autorange="reversed")
        st.plotly_chart(bars, key=f"{key}_views", config={"displayModeBar": False})
        method = st.selectbox("CAM method", list(METHODS), key=f"{key}_method",
                              help="gradcam is fast; scorecam is slow on CPU.")
        layers = ui.cam_layers(run, mtime)
        layer = st.selectbox("Layer", [None, *reversed(layers[-12:])], key=f"{key}_layer",
                             format_func=lambda name: "default (last conv block)" if name is None else name)
        target = st.selectbox("Explain", TARGETS, key=f"{key}_target")
        try:
            cam = ui.cam_map(run, mtime, rgb, method, layer, target)
        except (ValueError, RuntimeError) as e:
            st.error(f"CAM failed: {e}")
            return float(views.mean())
        focus = float(centre_focus(cam[None])[0])
        st.metric("Centre focus", "n/a" if np.isnan(focus) else f"{focus:.0%}",
                  help="Share of the CAM's mass inside the centre 32x32 (a uniform map gives 11%). The label "
                       "depends on the centre only, so a low share means the model looks at context.")
        if np.isnan(focus):
            st.caption("The map is empty: nothing in this patch pushes the model towards the target.")
    with image_col:
        cam_view(rgb, cam, key)
    return float(views.mean())


dataset_tab, upload_tab = st.tabs(["Dataset patch", "Your own patch"])
with dataset_tab:
    order = st.session_state.get("inspect_order")
    if order is None or not len(order):
        order = np.arange(len(store))
    index = int(st.session_state.get("inspect_index", order[0]))
    if not 0 <= index < len(store):
        index = int(order[0])
    position = np.flatnonzero(order == index)
    at = int(position[0]) if len(position) else 0
    nav = st.columns([1, 1, 3, 2])
    nav[0].button("Previous", key="inspect_prev", disabled=at == 0, icon=":material/arrow_back:",
                  on_click=go_to_patch, args=(int(order[max(at - 1, 0)]),))
    nav[1].button("Next", key="inspect_next", disabled=at >= len(order) - 1, icon=":material/arrow_forward:",
                  on_click=go_to_patch, args=(int(order[min(at + 1, len(order) - 1)]),))
    nav[2].markdown(f"Patch {at + 1:,} of {len(order):,} in the current filter")
    nav[3].text_input("Go to id", key="inspect_goto", placeholder="go to patch id",
                      on_change=go_to_typed_id, args=(store,), label_visibility="collapsed")
    if st.session_state.get("inspect_goto_error"):
        st.error(st.session_state.pop("inspect_goto_error"))

    patch_id, label = str(store.ids[index]), int(store.labels[index])
    rgb = store[index]
    st.markdown(f"**{patch_id}** · split {store.splits[index]} · label **{ui.label_name(label)}**")
    original, heat, controls = st.columns([4, 4, 3])
    with original:
        st.image(images.with_centre_box(rgb, SCALE), width="stretch", output_format="PNG",
                 caption="original, centre 32x32 outlined")
        mask = store.masks([index])
        if mask is not None and mask[0].any():
            st.image(images.with_centre_box(np.where(mask[0][..., None], rgb, rgb // 3), 2),
                     caption="tumour pixels (demo ground truth)")
    prob = model_panel(rgb, "inspect", heat, controls)

    st.subheader("Verdict")
    st.caption("Do you agree with the label and the model that the centre 32x32 holds tumour?")
    history = ui.verdict_history(ctx.dataset_key, patch_id)
    if len(history):
        last = history.iloc[-1]
        st.markdown(f"Current verdict: **{last['verdict']}** by {last['reviewer']} ({last['created'][:16]})")
    if not ctx.reviewer:
        st.warning("Enter your name as Reviewer in the sidebar to record verdicts.")
    if st.session_state.get("verdict_error"):
        st.error(st.session_state.pop("verdict_error"))
    note = st.text_input("Note (optional)", key=f"inspect_note_{index}")
    buttons = st.columns(len(VERDICTS) + 3)
    for col, verdict in zip(buttons, VERDICTS, strict=False):
        col.button(verdict.capitalize(), key=f"inspect_verdict_{verdict}", disabled=not ctx.reviewer,
                   type="secondary", width="stretch",  # no answer is styled as the expected one
                   on_click=save_verdict, args=(patch_id, verdict, f"inspect_note_{index}", prob))
    if len(history):
        with st.expander(f"History of this patch ({len(history)} verdicts)"):
            st.dataframe(history[["created", "reviewer", "verdict", "note", "checkpoint", "prob"]],
                         hide_index=True, key="inspect_history")

with upload_tab:
    st.caption("A .tif, .png or .jpg of a single patch. Larger images are centre-cropped to 96x96; "
               "nothing you upload is stored.")
    upload = st.file_uploader("Patch image", type=["tif", "tiff", "png", "jpg", "jpeg"], key="inspect_upload")
    if upload is not None:
        try:
            own = images.read_upload(upload.getvalue(), upload.name)
        except ValueError as e:
            st.error(str(e))
        else:
            original, heat, controls = st.columns([4, 4, 3])
            original.image(images.with_centre_box(own, SCALE), width="stretch", output_format="PNG",
                           caption=upload.name)
            model_panel(own, "upload", heat, controls)
