"""The model's view of one patch, shared by Inspect and Slides: P(tumour) per TTA view and Grad-CAM."""

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app.widgets import images, ui
from pcam_core.inference.cam import METHODS, TARGETS, centre_focus, empty_reason, overlay
from pcam_core.inference.infer import view_indices

SCALE = 4  # 96 px -> 384 px on screen
VIEW_NAMES = ["original", "rot 90", "rot 180", "rot 270", "flip", "flip + rot 90", "flip + rot 180",
              "flip + rot 270"]


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


def views_chart(views: np.ndarray, counted: np.ndarray) -> go.Figure:
    """P per view in the views' own order, the original on top, the counted ones blue, on a fixed 0-1 axis
    (a rescaled axis made 0.004 look like certainty)."""
    bars = go.Figure(go.Bar(x=views.tolist(), y=VIEW_NAMES, orientation="h",
                            marker_color=np.where(counted, "#3F6FA0", "#C9CED6").tolist(),
                            hovertemplate="%{y}: P(tumour) %{x:.3f}<extra></extra>"))
    bars.update_layout(height=250, margin=dict(t=10, b=10, l=10, r=10), xaxis_range=[0, 1],
                       xaxis_title="P(tumour)", yaxis_autorange="reversed")
    return bars


def model_panel(run: Path | None, rgb: np.ndarray, key: str, image_col, control_col, tta: int = 8
                ) -> float | None:
    """Prediction per TTA view and CAM controls in `control_col`, the overlay in `image_col`;
    returns P(tumour) averaged over the `tta` views that `predict` averages (so Browse and Inspect show
    the same number), None without a model."""
    if run is None:
        control_col.info("Choose a trained model in the sidebar to see its prediction and CAM.")
        return None
    run, mtime = ui.model_key(run)
    views = ui.tta_views(run, mtime, rgb)
    counted = np.isin(np.arange(len(views)), list(view_indices(tta)))
    used = views[counted]
    with control_col:
        cols = st.columns(2)
        cols[0].metric("P(tumour)", f"{used.mean():.3f}",
                       help="The mean over the flips and rotations set by TTA views in the sidebar (the "
                            "blue bars below).")
        cols[1].metric("Spread", f"{used.std():.3f}" if tta > 1 else "n/a",
                       help="How much the counted views disagree (standard deviation of their "
                            "probabilities); n/a over one view.")
        st.caption(f"P and spread over the {tta} view{'s' * (tta > 1)} in blue (TTA views, in the sidebar)"
                   + ("; the grey ones are shown, not counted." if tta < len(views) else "."))
        st.plotly_chart(views_chart(views, counted), key=f"{key}_views", config={"displayModeBar": False})
        method = st.selectbox("CAM method", list(METHODS), key=f"{key}_method",
                              help="Where the model looks. gradcam: the layer's activations weighted by "
                                   "their gradients (fast). gradcam++: the same, better at several "
                                   "separate spots. eigencam: the main pattern of the activations, "
                                   "no gradients. layercam: gradients pixel by pixel, finer maps. "
                                   "scorecam: masks the patch and watches P change (slow on CPU).")
        layers, default = ui.cam_layers(run, mtime)
        labels = {layer.name: layer.label for layer in layers}
        names = list(labels)
        if st.session_state.get(f"{key}_layer") not in names:  # another model's layer, or none yet
            st.session_state[f"{key}_layer"] = default if default in names else names[-1]
        marked = {name: label + (" (default)" if name == default else "") for name, label in labels.items()}
        layer = st.selectbox("Layer", names, key=f"{key}_layer", format_func=marked.get,
                             help="Where in the network the map is taken. 6 x 6 means the map has 6 x 6 "
                                  "cells across the model's input: early blocks have many small cells and "
                                  "see simple features (stain, edges), late blocks few large cells and see "
                                  "what the decision rests on. The default was chosen by how well its maps "
                                  "point at known tumour (BENCHMARKS.md).")
        target = st.selectbox("Explain", TARGETS, key=f"{key}_target")
        try:
            cam = ui.cam_map(run, mtime, rgb, method, layer, target)
        except (ValueError, RuntimeError) as e:
            st.error(f"CAM failed: {e}")
            return float(used.mean())
        focus = float(centre_focus(cam[None])[0])
        st.metric("Centre focus", "n/a" if np.isnan(focus) else f"{focus:.0%}",
                  help="Share of the CAM's mass inside the centre 32x32 (a uniform map gives 11%). The label "
                       "depends on the centre only, so a low share means the model looks at context.")
        if np.isnan(focus):
            st.caption(f"The map is empty: {empty_reason(method, target)}")
    with image_col:
        cam_view(rgb, cam, key)
    return float(used.mean())


def agreement(verdict: str, label: int, prob: float | None) -> str:
    """" · agrees with the label, not with the model": a verdict's relation to both, derived."""
    if verdict not in ("tumour", "normal"):
        return ""
    says = verdict == "tumour"
    parts = []
    if label in (0, 1):
        parts.append(("agrees with" if says == (label == 1) else "differs from") + " the label")
    if prob is not None and np.isfinite(prob):
        parts.append(("agrees with" if says == (prob >= 0.5) else "differs from") + " the model")
    return (" · " + ", ".join(parts)) if parts else ""
