"""Explore: class balance, colour and brightness by class, stain scatter, blank patches, sample grids.

Everything comes from the per-patch stats table computed once at packing, so it is instant on 220k
patches: no page here touches the pixels of more than a few dozen patches.
"""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.widgets import sidebar, ui

PLOT = {"displaylogo": False}
# legend in a row above the plot, on the left: plotly's toolbar takes the top right corner
LEGEND = dict(legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
              margin=dict(t=40, b=10))

ui.header("Explore", "How the patches look by class, from the per-patch statistics computed at packing. "
                     "Look for stain batches, blank background tiles and class imbalance before training.")
ctx = sidebar.context()
store = ctx.store
stats = store.stats

split = st.segmented_control("Split", ["all", *store.split_names()], default="all", required=True,
                             key="eda_split", persist_state="session")
split = None if split == "all" else split
chosen = stats if split is None else stats[stats["split"] == split]

st.subheader("Class balance")
balance = (chosen.groupby(["split", "label"]).size().rename("patches").reset_index()
           .assign(label=lambda t: t["label"].map(ui.label_name)))
fig = go.Figure([go.Bar(x=part["split"], y=part["patches"], name=label, marker_color=ui.LABEL_COLOURS[label],
                        text=part["patches"], textposition="outside")
                 for label, part in balance.groupby("label")])
fig.update_layout(barmode="group", height=300, yaxis_title="patches", **LEGEND)
st.plotly_chart(fig, key="eda_balance", config=PLOT)

left, right = st.columns(2)
with left:
    st.subheader("Distribution by class")
    column = st.selectbox("Statistic", list(ui.STAT_NAMES), format_func=ui.STAT_NAMES.get, key="eda_stat",
                          persist_state="session")
    hist = ui.class_histogram(store, store.fingerprint, split, column)
    fig = go.Figure([go.Bar(x=(part["left"] + part["right"]) / 2, y=part["share"], name=label, opacity=0.6,
                            marker_color=ui.LABEL_COLOURS[label],
                            width=(part["right"] - part["left"]).iloc[0])
                     for label, part in hist.groupby("label")])
    fig.update_layout(barmode="overlay", height=360, yaxis_title="share of class",
                      xaxis_title=ui.STAT_NAMES[column], **LEGEND)
    st.plotly_chart(fig, key="eda_hist", config=PLOT)
with right:
    st.subheader("Stain colour")
    sample = ui.stats_sample(store, store.fingerprint, split)
    fig = go.Figure([go.Scattergl(x=part["mean_r"], y=part["mean_b"], mode="markers", name=label,
                                  marker=dict(size=3, opacity=0.5, color=ui.LABEL_COLOURS[label]))
                     for label, part in sample.groupby("label_name")])
    fig.update_layout(height=420, xaxis_title="mean red (eosin)", yaxis_title="mean blue (haematoxylin)",
                      **LEGEND)
    st.plotly_chart(fig, key="eda_scatter", config=PLOT)
    if len(sample) < len(chosen):
        st.caption(f"A random {len(sample):,} of {len(chosen):,} patches.")

st.subheader("Blank and background patches")
blank = np.flatnonzero(chosen["blank"].to_numpy())
st.markdown(f"**{len(blank):,}** of {len(chosen):,} patches ({len(blank) / max(len(chosen), 1):.1%}) are "
            "mostly background (little tissue). They carry no tumour evidence and can dominate a loss.")
if len(blank):
    shown = chosen.index.to_numpy()[blank[:8]]
    ui.patch_grid(store, shown, [f"tissue {t:.0%}" for t in chosen.loc[shown, "tissue_frac"]])

st.subheader("Samples by class")
if st.button("Shuffle", key="eda_shuffle", icon=":material/shuffle:"):
    st.session_state["eda_seed"] = st.session_state.get("eda_seed", 0) + 1
rng = np.random.default_rng(st.session_state.get("eda_seed", 0))
for label in pd.unique(chosen["label"]):
    positions = chosen.index.to_numpy()[chosen["label"].to_numpy() == label]
    shown = np.sort(rng.choice(positions, min(8, len(positions)), replace=False))
    st.markdown(f"**{ui.label_name(label).capitalize()}** ({len(positions):,} patches); the yellow box "
                "is the centre 32x32 that decides the label")
    ui.patch_grid(store, shown, [str(i) for i in store.ids[shown]])
