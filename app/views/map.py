"""Map: every patch of a split as a point, placed by what the model (or the patch's colour) makes of it.

Box or lasso a cluster to browse it; click a point to see its patch and the patches most like it.
"""


import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.compute import background
from app.widgets import reviews, sidebar, ui
from app.widgets.images import with_centre_box
from pcam_core import review
from pcam_core.inference import embed
from pcam_core.review.store import StoreError

NO_MODEL = "Colour and texture (no model)"
CATEGORIES = {
    "label": {"tumour": ui.LABEL_COLOURS["tumour"], "normal": ui.LABEL_COLOURS["normal"],
              "unlabelled": ui.LABEL_COLOURS["unlabelled"]},
    "outcome": {"false negative": "#D62728", "false positive": "#FF7F0E", "correct": "#B8C4CE",
                "unlabelled": "#9A9A9A"},
    "verdict": {"not reviewed": "#C9CED6", "tumour": ui.LABEL_COLOURS["tumour"],
                "normal": ui.LABEL_COLOURS["normal"], "unsure": "#E0A030"},
}
SCALES = {"P(tumour)": "prob", "loss": "loss", "TTA spread": "spread", "brightness": "brightness",
          "saturation": "saturation", "tissue share": "tissue_frac"}

ui.header("Map", "Every patch of a split as one point: patches the model sees alike sit together. Colour it "
                 "by error, label or stain to find where the mistakes cluster; box or lasso a cluster to "
                 "browse it; click a point to see its patch and the patches most like it.")
ctx = sidebar.context()
store = ctx.store

row = st.columns([1, 2, 2])
split = row[0].selectbox("Split", store.split_names(), key="map_split", persist_state="session",
                         bind="query-params")
sources = ([f"Model {ctx.run.name}"] if ctx.run is not None else []) + [NO_MODEL]
source = row[1].selectbox("Map from", sources, key="map_source", persist_state="session", bind="query-params",
                          help="A model's embedding (what its classifier reads), or colour and texture "
                               "statistics, which need no training.")
checkpoint = str(ctx.run) if source != NO_MODEL and ctx.run is not None else None
mtime = 0.0
if checkpoint is not None:
    sidebar.warn_if_other_data(ctx)
    mtime = ui.model_key(ctx.run)[1]  # a checkpoint that cannot be read ends the page with one message
device = ui.device_spec()
table = embed.cached_map(store, split, checkpoint, device=device)


def describe(stage: str, done: int, total: int) -> str:
    what = {"embedding": "Embedding the patches", "map": "Laying out the map (UMAP)"}.get(stage, "Starting")
    count = f"{done:,} of {total:,} {split} patches" if total else f"{split} patches"
    return f"{what}: {count}. You can leave this page: the map keeps being made and is kept on disk."


def first_look(preview: pd.DataFrame) -> None:
    """The embeddings laid out by PCA, by label, while UMAP works: something to look at in the meantime."""
    fig = go.Figure()
    names = preview["label"].map(ui.label_name)
    for name, hue in CATEGORIES["label"].items():
        part = preview[names == name]
        if len(part):
            fig.add_trace(go.Scattergl(x=part["x"], y=part["y"], mode="markers",
                                       name=f"{name} ({len(part):,})", hoverinfo="skip",
                                       marker={"color": hue, "size": 4, "opacity": 0.7}))
    fig.update_layout(height=480, margin={"l": 0, "r": 0, "t": 30, "b": 0}, dragmode="pan",
                      xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
                      legend={"orientation": "h", "y": 1.02, "itemsizing": "constant"})
    st.caption(f"A first look while the map is laid out: {len(preview):,} {split} patches from "
               f"{preview.attrs['source']}, placed by the first two principal components (PCA). The map "
               "(UMAP), where clusters separate better and points can be picked, replaces it when ready.")
    st.plotly_chart(fig, key="map_first_look", config={"displaylogo": False})


if table is None:
    job = background.job_for(("map", store.fingerprint, split, checkpoint, mtime),
                             lambda progress, keep: embed.map_table(store, split, checkpoint, device=device,
                                                                    progress=progress, preview=keep),
                             partial=True)
    if job.running or job.error:
        ui.job_progress(job, describe, "The map could not be made")
        if job.running and job.partial is not None:
            first_look(job.partial)
        st.stop()
    table = job.result.copy()  # the job's table is shared by every session: columns are added below
source_text = table.attrs["source"]

# what the points can be coloured by
verdicts = reviews.current_verdicts(ctx.dataset_key)
stats = store.stats.iloc[table["index"].to_numpy()]
for column in ("brightness", "saturation", "tissue_frac"):
    table[column] = stats[column].to_numpy()
preds = None
if ctx.run is not None and checkpoint is not None:
    from pcam_core.inference import (
        infer,  # the sidebar's model at its TTA views, when Browse or Evaluate scored them
    )

    preds = infer.cached_predictions([checkpoint], store, split, tta=ctx.tta)
if preds is not None:  # else the probabilities of the map's own pass (one view)
    table = table.drop(columns="prob").merge(preds[["index", "prob", "spread"]], on="index", how="left")
has_prob = table["prob"].notna().any()
labelled = (table["label"] >= 0).any()
# verdicts and loss as Browse defines them (review.review_table), by store index
scored = review.review_table(store, split, verdicts, table[["index", "prob"]].assign(
    spread=table["spread"] if "spread" in table else 0.0) if has_prob else None).set_index("index")
table["verdict"] = scored["verdict"].reindex(table["index"]).fillna("not reviewed").to_numpy()
if has_prob:
    table["loss"] = scored["loss"].reindex(table["index"]).to_numpy()
    called = table["prob"] >= review.THRESHOLD
    table["outcome"] = np.select([table["label"] < 0, called == (table["label"] == 1), called],
                                 ["unlabelled", "correct", "false positive"], "false negative")
table["label_name"] = table["label"].map(ui.label_name)

options = (["label"] if labelled else []) + (["outcome"] if has_prob and labelled else []) + \
          (["P(tumour)"] if has_prob else []) + (["loss"] if has_prob and labelled else []) + \
          (["TTA spread"] if "spread" in table and ctx.tta > 1 else []) + \
          ["verdict", "brightness", "saturation", "tissue share"]
colour = row[2].selectbox("Colour by", options, key="map_colour", persist_state="session",
                            bind="query-params")

fig = go.Figure()
if colour in CATEGORIES:
    column = {"label": "label_name", "outcome": "outcome", "verdict": "verdict"}[colour]
    for name, hue in CATEGORIES[colour].items():  # drawn in this order: errors last, on top
        part = table[table[column] == name]
        if len(part):
            fig.add_trace(go.Scattergl(x=part["x"], y=part["y"], mode="markers",
                                       name=f"{name} ({len(part):,})", customdata=part["index"].to_numpy(),
                                       marker={"color": hue, "size": 4, "opacity": 0.8}))
else:
    values = table[SCALES[colour]]
    fig.add_trace(go.Scattergl(x=table["x"], y=table["y"], mode="markers",
                               customdata=table["index"].to_numpy(), showlegend=False,
                               marker={"color": values, "colorscale": "Viridis", "size": 4, "opacity": 0.8,
                                       "colorbar": {"title": colour}}))
fig.update_traces(hovertemplate="patch %{customdata}<extra></extra>")
# pan by default, where a click selects the point under it: Streamlit's chart turns click selection off
# while box or lasso is the drag mode (it sets plotly's clickmode to "event" there)
fig.update_layout(height=640, margin={"l": 0, "r": 0, "t": 30, "b": 0}, dragmode="pan",
                  clickmode="event+select", xaxis={"visible": False},
                  yaxis={"visible": False, "scaleanchor": "x"},
                  legend={"orientation": "h", "y": 1.02, "itemsizing": "constant"})
st.caption(f"{len(table):,} {split} patches, mapped from {source_text} (UMAP, seed 0). "
           "Click a point to look at it; Box or Lasso select in the chart's toolbar picks a region.")
left, right = st.columns([3, 2])
with left:
    event = st.plotly_chart(fig, key="map_chart", on_select="rerun",
                            selection_mode=("points", "box", "lasso"), config={"displaylogo": False})


def picked(event) -> np.ndarray:
    """Store indices of the points the reader selected."""
    points = (event or {}).get("selection", {}).get("points", [])  # Streamlit's state is a dict
    found = []
    for p in points:
        data = p.get("customdata")
        found.append(int(data[0] if isinstance(data, list) else data))
    return np.asarray(sorted(set(found)), dtype=np.int64)


def captions(indices: np.ndarray) -> list[str]:
    tiles = table.set_index("index").loc[indices].reset_index()
    tiles["verdict"] = tiles["verdict"].where(tiles["verdict"] != "not reviewed", None)
    return ui.tile_captions(tiles if has_prob else tiles.drop(columns="prob"))


chosen = picked(event)
with right:
    if len(chosen) == 0:
        st.info("Select points on the map: one click shows that patch here; a box or a lasso makes a "
                "selection to browse.")
    elif len(chosen) == 1:
        index = int(chosen[0])
        st.image(with_centre_box(store[index], 3), width=288, output_format="PNG")
        here = table[table["index"] == index].iloc[0]
        st.markdown(f"**{store.ids[index]}** · label {here['label_name']}"
                    + (f" · P(tumour) {here['prob']:.3f}" if has_prob else "")
                    + f" · verdict {here['verdict']}")
        if st.button("Open in Inspect", key="map_inspect"):
            ui.open_in_inspect(index, table["index"].to_numpy())
        st.markdown("**Most similar patches** (nearest in the embedding)")
        similar = ui.similar_patches(store, store.fingerprint, split, checkpoint, mtime, index)
        ui.patch_grid(store, similar, captions(similar), columns=4)
    else:
        ids = store.ids[chosen]
        st.metric("Selected", f"{len(chosen):,} patches")
        sel = table[table["index"].isin(chosen)]
        parts = [f"{(sel['label'] == 1).mean():.0%} labelled tumour"] if labelled else []
        if has_prob and labelled:
            parts.append(f"{(sel['outcome'] != 'correct').mean():.0%} misclassified at 0.5")
        if parts:
            st.caption(", ".join(parts) + ".")
        if st.button(f"Browse these {len(chosen):,} patches", key="map_browse", type="primary"):
            st.session_state["map_selection"] = {"dataset": ctx.dataset_key, "split": split,
                                                 "ids": ids.tolist()}
            st.session_state["browse_split"] = split
            st.session_state["browse_map_selection"] = True
            st.session_state["browse_page"] = 1
            ui.switch_page("views/browse.py")
        st.download_button("Download their ids (CSV)", pd.DataFrame({"id": ids}).to_csv(index=False),
                           file_name=f"map_selection_{split}.csv", mime="text/csv", on_click="ignore",
                           key="map_export")
        with st.form("map_tag_form", border=False):
            row = st.columns([2, 1], vertical_alignment="bottom")
            tag = row[0].text_input("Tag", key="map_tag", placeholder="e.g. pale stain, blurred",
                                    help="Kept in the review store with your name; Browse filters by it.")
            if row[1].form_submit_button(f"Tag {len(chosen):,}", key="map_tag_save"):
                try:
                    n = reviews.review_store().tag(ctx.dataset_key, ids.tolist(), tag, ctx.reviewer)
                    already = len(chosen) - n
                    st.success(f"Tagged {n:,} patches '{ui.as_text(tag.strip())}'"
                               + (f" ({already:,} had it already)." if already else "."))
                except StoreError as e:
                    st.error(f"{e}: free disk space or point PCAM_REVIEW_DB elsewhere; the selection is "
                             "still here.")
                except (ValueError, OSError) as e:
                    st.error(str(e))
        ui.patch_grid(store, chosen[:16], captions(chosen[:16]), columns=4)
