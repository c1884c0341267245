"""Browse: a paginated grid of patches, filtered and sorted by label, prediction, error, doubt and verdict."""

import numpy as np
import streamlit as st

from app import ui

SORTS = {"dataset order": None, "probability, high first": ("prob", False),
         "probability, low first": ("prob", True), "loss, high first": ("loss", False),
         "uncertainty, high first": ("priority", False)}
OUTCOMES = ["any", "correct", "false positive", "false negative"]
VERDICT_FILTERS = ["any", "not reviewed", "agree", "disagree", "unsure"]


def first_page() -> None:
    st.session_state["browse_page"] = 1


ui.header("Browse", "Every patch of a split, with the centre 32x32 outlined. Filter by what the model got "
                    "wrong or is unsure of; the review queue puts first the unreviewed patches that most "
                    "need an eye.")
ctx = ui.context()
store = ctx.store
keep = dict(persist_state="session", on_change=first_page)

row = st.columns([1, 1, 1, 1, 1])
split = row[0].selectbox("Split", store.split_names(), key="browse_split", **keep)
labelled = store.has_labels(split)
label = row[1].selectbox("Label", ["any", "tumour", "normal"], key="browse_label", disabled=not labelled,
                         **keep)
verdict = row[2].selectbox("Verdict", VERDICT_FILTERS, key="browse_verdict", **keep)
tta = row[3].selectbox("TTA views", [1, 2, 4, 8], key="browse_tta", disabled=ctx.run is None, **keep,
                       help="Predictions averaged over flips and rotations; their spread shows disagreement.")
queue = row[4].toggle("Review queue", key="browse_queue", **keep,
                      help="Unreviewed first, then the patches the model is least sure of or whose "
                           "views disagree.")

table = ui.browse_table(ctx, split, tta)
has_preds = "prob" in table
if has_preds:
    row = st.columns([1, 1, 2, 1, 1])
    predicted = row[0].selectbox("Prediction", ["any", "tumour", "normal"], key="browse_pred", **keep)
    outcome = row[1].selectbox("Outcome", OUTCOMES, key="browse_outcome", disabled=not labelled, **keep)
    low, high = row[2].slider("Probability range", 0.0, 1.0, (0.0, 1.0), 0.01, key="browse_prob", **keep)
    min_priority = row[3].slider("Min. uncertainty", 0.0, 2.0, 0.0, 0.05, key="browse_priority", **keep,
                                 help="Doubt (1 at p = 0.5) plus twice the TTA spread.")
    sort = row[4].selectbox("Sort", list(SORTS), key="browse_sort", disabled=queue, **keep)
else:
    st.info("Choose a trained model in the sidebar to filter and sort by its predictions "
            "(train one on the Train page).")

mask = np.ones(len(table), bool)
if labelled and label != "any":
    mask &= table["label"].to_numpy() == (1 if label == "tumour" else 0)
if verdict == "not reviewed":
    mask &= table["verdict"].isna().to_numpy()
elif verdict != "any":
    mask &= (table["verdict"] == verdict).to_numpy()
if has_preds:
    prob = table["prob"].to_numpy()
    if predicted != "any":
        mask &= (prob >= 0.5) == (predicted == "tumour")
    if labelled and outcome != "any":
        wrong = (prob >= 0.5) != (table["label"].to_numpy() == 1)
        mask &= {"correct": ~wrong, "false positive": wrong & (prob >= 0.5),
                 "false negative": wrong & (prob < 0.5)}[outcome]
    mask &= (prob >= low) & (prob <= high) & (table["priority"].to_numpy() >= min_priority)
shown = table[mask]
if queue:
    keys = [shown["verdict"].notna()] + ([-shown["priority"]] if has_preds else [])
    shown = shown.iloc[np.lexsort(keys[::-1])]
elif has_preds and SORTS[sort]:
    column, ascending = SORTS[sort]
    shown = shown.sort_values(column, ascending=ascending, kind="stable")

row = st.columns([2, 1, 3])
size = row[0].segmented_control("Per page", [24, 48, 96], default=48, required=True, key="browse_size",
                                **keep)
pages = max(1, -(-len(shown) // size))
page = row[1].number_input("Page", 1, pages, key="browse_page", persist_state="session")
start = (min(page, pages) - 1) * size
row[2].markdown(f"**{len(shown):,}** of {len(table):,} {split} patches match; "
                f"page {min(page, pages)} of {pages}.")

if shown.empty:
    st.warning("No patch matches these filters.")
    st.stop()
tiles = shown.iloc[start:start + size]
chosen = ui.patch_grid(store, tiles["index"].to_numpy(), ui.tile_captions(tiles),
                       columns=12 if size == 96 else 8, button_key="browse_inspect")
if chosen is not None:
    ui.open_in_inspect(chosen, shown["index"].to_numpy())

with st.expander("Verdicts on this dataset"):
    counts = ui.review_store().counts(ctx.dataset_key)
    st.write(", ".join(f"{name}: {n:,}" for name, n in counts.items()))
    st.download_button("Download verdicts (CSV, full audit trail)",
                       ui.review_store().export_csv(ctx.dataset_key, full_history=True),
                       file_name="pcam_verdicts.csv", mime="text/csv", on_click="ignore", key="browse_export")
