"""Browse: a paginated grid of patches, filtered and sorted by label, prediction, error, doubt and verdict."""

import streamlit as st

from app.compute import scoring
from app.widgets import reviews, sidebar, ui
from pcam_core import review

SORTS = {"dataset order": None, "probability, high first": ("prob", False),
         "probability, low first": ("prob", True), "loss, high first": ("loss", False),
         "uncertainty, high first": ("priority", False)}


# the choices that need the whole split scored, at their "no choice" value
MODEL_CHOICES = {"browse_pred": "any", "browse_outcome": "any", "browse_prob": (0.0, 1.0),
                 "browse_priority": 0.0, "browse_sort": "dataset order"}


def first_page() -> None:
    st.session_state["browse_page"] = 1


ui.header("Browse", "Every patch of a split, with the centre 32x32 outlined. Filter by what the model got "
                    "wrong or is unsure of; the review queue puts first the unreviewed patches that most "
                    "need an eye.")
ctx = sidebar.context()
sidebar.warn_if_other_data(ctx)
store = ctx.store
# the filters and the page live in the URL: a reload or a bookmark comes back to the same view
keep = dict(persist_state="session", bind="query-params", on_change=first_page)

row = st.columns([1, 1, 1, 1, 1])
split = row[0].selectbox("Split", store.split_names(), key="browse_split", **keep)
labelled = store.has_labels(split)
label = row[1].selectbox("Label", ["any", "tumour", "normal"], key="browse_label", disabled=not labelled,
                         **keep)
verdicts_offered = [v for v in review.VERDICT_FILTERS if ctx.run is not None or v != "differs from the model"]
verdict = row[2].selectbox("Verdict", verdicts_offered, key="browse_verdict", **keep,
                           help="A reviewer's answer to 'tumour in the centre 32x32?', or where that answer "
                                "differs from the given label or from the model's call at 0.5.")
queue = row[3].toggle("Review queue", key="browse_queue", **keep,
                      help="Unreviewed first, then the patches the model is least sure of or whose "
                           "views disagree.")

issues = ui.label_check(ctx.dataset_key)
checked = issues is not None and split == "train"  # crossval scores the labelled training patches
mislabelled = row[4].toggle(
    "Likely mislabelled", key="browse_mislabelled", disabled=not checked, **keep,
    help="Patches whose given label confident learning (cleanlab) flags as likely wrong, worst first: each "
         "patch was scored by a model that never trained on it (python -m pcam_core crossval). "
         + (f"From a {issues['folds'].iloc[0]}-fold crossval of {issues['model'].iloc[0]}." if checked
            else "No finished crossval of this split yet."))

selection = st.session_state.get("map_selection")
from_map = selection is not None and selection["dataset"] == ctx.dataset_key and selection["split"] == split
pairs = ui.duplicate_pairs(store)
copies = set(pairs["a_id"]) | set(pairs["b_id"]) if pairs is not None else set()
tags = reviews.patch_tags(ctx.dataset_key)
row = st.columns([1, 1, 2]) if from_map or copies or len(tags) else None
on_map = from_map and row[0].toggle(
    f"Map selection: {len(selection['ids']):,} patches", key="browse_map_selection", **keep,
    help="Only the patches boxed or lassoed on the Map page.")
with_copies = bool(copies) and row[1].toggle(
    "Has a copy", key="browse_copies", **keep,
    help="Only patches with an exact or near copy in the dataset (Dataset page: Duplicates).")
tag = row[2].selectbox("Tag", ["any", *sorted(set(tags["tag"]))], key="browse_tag", **keep,
                       help="Patches a reviewer tagged (Map page: tag a selection).") if len(tags) else "any"
wanted = set(selection["ids"]) if on_map else None
for kept in ([copies] if with_copies else []) + ([set(tags.loc[tags["tag"] == tag, "patch_id"])]
                                                 if tag != "any" else []):
    wanted = kept if wanted is None else wanted & kept

mine = reviews.assigned_to_me(ctx.dataset_key, ctx.user)
if mine and st.toggle(f"Assigned to me ({'all' if '' in mine else f'{len(mine):,}'})", key="browse_assigned",
                      **keep, help="The patches an admin gave you to review."):
    if "" not in mine:
        wanted = mine if wanted is None else wanted & mine

preds, pending = scoring.predictions_soon(store, [ctx.run] if ctx.run else [], split, ctx.tta)
asked = {key: st.session_state.get(key, default) for key, default in MODEL_CHOICES.items()}
wants_model = queue or verdict == "differs from the model" or any(
    (tuple(v) if isinstance(v, list) else v) != MODEL_CHOICES[k] for k, v in asked.items())
partial = pending.partial if pending is not None and wants_model else None
if partial is not None:  # the model's filters, sorts and queue over the patches scored so far
    preds = partial
verdicts = reviews.seen_verdicts(ctx.dataset_key, ctx.reviewer)  # blind review: one's own only
table = review.review_table(store, split, verdicts, preds)
if checked:
    table = table.merge(issues[["id", "quality", "issue"]].assign(cv_prob=issues["prob"]), on="id",
                        how="left")
has_preds = preds is not None
offer_model = has_preds or (pending is not None and pending.partial is not None)  # some rows scored


@st.fragment(run_every=1.0)
def scoring_progress(job: scoring.BackgroundScoring, shown: int | None = None) -> None:
    """While the split is scored in the background: its progress, then a rerun of the page; with `shown`
    (the patches scored when the page drew), a rerun each time as many again (500 at least) are scored, so
    the grid grows with them without redrawing every second."""
    if job.running:
        share = job.done / job.total if job.total else 0.0
        st.progress(share, text=f"Scoring all {job.total or len(table):,} {job.split} patches for the "
                                f"model's filters and sorts: {job.done:,} done")
        if shown is not None and job.partial is not None and len(job.partial) >= shown + max(500, shown):
            st.rerun()
    elif job.error:
        st.error(f"Scoring the {job.split} patches failed: {job.error}")
    else:
        st.rerun()


predicted, outcome, low, high, min_priority, sort = "any", "any", 0.0, 1.0, 0.0, "dataset order"
if offer_model:
    row = st.columns([1, 1, 2, 1, 1])
    predicted = row[0].selectbox("Prediction", ["any", "tumour", "normal"], key="browse_pred", **keep)
    outcome = row[1].selectbox("Outcome", review.OUTCOMES, key="browse_outcome", disabled=not labelled,
                               **keep)
    low, high = row[2].slider("Probability range", 0.0, 1.0, (0.0, 1.0), 0.01, key="browse_prob", **keep)
    min_priority = row[3].slider("Min. uncertainty", 0.0, 2.0, 0.0, 0.05, key="browse_priority", **keep,
                                 help="Doubt (1 at p = 0.5) plus twice the TTA spread.")
    sort = row[4].selectbox("Sort", list(SORTS), key="browse_sort", disabled=queue, **keep)
    if pending is not None:
        scoring_progress(pending, len(partial) if partial is not None else None)
    if partial is not None:
        st.caption(f"The model's filters and sorts and the review queue cover the {len(partial):,} of "
                   f"{len(table):,} patches scored so far; the rest join as they are scored.")
elif pending is not None:
    scoring_progress(pending, 0 if wants_model else None)  # with a model view asked: on with the first
    if wants_model:
        st.info("The review queue and the model's filters and sorts start with the first patches scored: "
                "the grid follows in a moment.")
        st.stop()
else:
    st.info("Choose a trained model in the sidebar to filter and sort by its predictions "
            "(train one on the Train page).")

shown = review.select(table, label=label if labelled else "any", verdict=verdict, predicted=predicted,
                      outcome=outcome if labelled else "any", prob=(low, high), min_priority=min_priority,
                      queue=queue, sort=SORTS[sort], mislabelled=mislabelled and checked,
                      ids=wanted)

if ctx.user.may("administer") and len(shown):
    with st.expander(f"Assign these {len(shown):,} patches to a reviewer"):
        reviews.assign_form(ctx.dataset_key, shown["id"].astype(str).tolist(),
                            f"these {len(shown):,} patches", "browse_assign")

row = st.columns([2, 1, 3])
size = row[0].segmented_control("Per page", [24, 48, 96], default=48, required=True, key="browse_size",
                                **keep)
pages = max(1, -(-len(shown) // size))
page = row[1].number_input("Page", 1, pages, key="browse_page", persist_state="session", bind="query-params")
start = (min(page, pages) - 1) * size
row[2].markdown(f"**{len(shown):,}** of {len(table):,} {split} patches match; "
                f"page {min(page, pages)} of {pages}."
                + " T / N: the given label (tumour, normal)."
                + (f" p: P(tumour), mean of {ctx.tta} view{'s' * (ctx.tta > 1)}."
                   if ctx.run is not None else ""))

if shown.empty:
    st.warning("No patch matches these filters.")
    st.stop()
tiles = shown.iloc[start:start + size]
if pending is not None and partial is None:  # the page's own patches, scored now with the app's model
    run, mtime = ui.model_key(ctx.run)
    tiles = tiles.merge(scoring.page_predictions(run, mtime, store, store.fingerprint,
                                            tuple(tiles["index"].tolist()), ctx.tta), on="index")
captions = ui.tile_captions(tiles)
if mislabelled and checked:  # the out-of-fold probability the flag rests on
    captions = [f"{c} · cv {p:.2f}" for c, p in zip(captions, tiles["cv_prob"], strict=True)]
chosen = ui.patch_grid(store, tiles["index"].to_numpy(), captions,
                       columns=12 if size == 96 else 8, button_key="browse_inspect")
if chosen is not None:
    ui.open_in_inspect(chosen, shown["index"].to_numpy())

with st.expander("Verdicts on this dataset"):
    counts = verdicts["verdict"].value_counts()
    st.write(", ".join(f"{name}: {counts.get(name, 0):,}" for name in review.VERDICTS))
    trail = reviews.verdict_history(ctx.dataset_key)
    if reviews.blind_mode(ctx.dataset_key)["active"]:  # blind review: one's own verdicts only
        trail = trail[reviews.mine(trail, ctx.reviewer)]
    st.download_button("Download verdicts (CSV, full audit trail)", trail.to_csv(index=False),
                       file_name="pcam_verdicts.csv", mime="text/csv", on_click="ignore", key="browse_export")
