"""Reviewers: how the verdicts agree, where reviewers conflict (a queue for Inspect), and the labels they
settled on, ready for training."""

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.widgets import reviews, sidebar, ui
from pcam_core.review import agreement

ui.header("Reviewers", "How the reviewers' answers agree with each other (Cohen's kappa), with the given "
                       "labels and with the model they saw; the patches on which they conflict, as a queue; "
                       "and the labels they settled on, for training.")
ctx = sidebar.context()
store = ctx.store
scope = st.selectbox("Verdicts on", [ctx.dataset_key, *reviews.slides_reviewed()], key="reviewers_scope",
                     format_func=lambda d: f"slide {Path(d[6:]).name}" if d.startswith("slide:")
                     else f"this dataset ({Path(d).name})",
                     help="A slide's cell verdicts count by the same rule as a dataset's patch verdicts.")
on_slide = scope.startswith("slide:")
history = reviews.verdict_history(scope)
if history.empty:
    st.info("No verdicts on this dataset yet: answer 'Tumour in the centre 32x32?' on the Inspect page.")
    st.stop()

if not on_slide:
    known = history["patch_id"].isin(set(store.ids))
    if not known.all():
        gone = history.loc[~known, "patch_id"].nunique()
        st.warning(f"{gone:,} reviewed patch(es) are no longer in this dataset; they are left out here.")
        history = history[known]

blind = reviews.blind_verdicts(scope)
if blind and st.toggle(f"Only the {int(history['seq'].isin(blind).sum()):,} verdicts given blind",
                       key="reviewers_blind", help="Blind review: each answered without seeing the others' "
                                                   "verdicts. Agreement among them is the honest measure."):
    history = history[history["seq"].isin(blind)]
# a slide's cells have no given label: agreement with the label is n/a there
labels = pd.Series(dtype=float) if on_slide else pd.Series(store.labels, index=store.ids)
people = agreement.reviewer_table(history, labels)
st.subheader("Each reviewer")
st.dataframe(people, hide_index=True, key="reviewers_people",
             column_config={name: st.column_config.NumberColumn(name, format="percent")
                            for name in ("agrees with the label", "agrees with the model")})
st.caption("Agreement counts the Yes and No answers (Unsure is neither); 'with the model' is its call at "
           "P 0.5 for the model shown when the verdict was given.")

pairs = agreement.kappa_table(history)
st.subheader("Each pair of reviewers")
if pairs.empty:
    st.info("One reviewer so far: agreement needs two.")
else:
    shown = pairs.assign(kappa=[("n/a" if np.isnan(k) else f"{k:.3f}") for k in pairs["kappa"]])
    kappa_help = ("Agreement beyond chance on the patches both answered: 1 is full agreement, 0 what chance "
                  "gives; n/a when they share no patch or one answer only.")
    st.dataframe(shown, hide_index=True, key="reviewers_pairs",
                 column_config={"agree": st.column_config.NumberColumn("agree", format="percent"),
                                "kappa": st.column_config.TextColumn("Cohen's kappa", help=kappa_help)})

queue = agreement.conflicts(history)
ties = int((queue["settled"] == "conflict").sum())
st.subheader(f"Disagreements ({len(queue):,})")
if queue.empty:
    st.caption("No patch has a Yes and a No from different reviewers (Unsure counts for nothing).")
else:
    st.caption(f"{ties:,} tie{'s' * (ties != 1)} (the conflicts left out of training below) and "
               f"{len(queue) - ties:,} settled by a majority; a Yes and a No on one patch, Unsure counting "
               "for nothing.")
    st.dataframe(queue, hide_index=True, key="reviewers_conflicts")
    if on_slide:
        st.caption("Open a cell on the Slides page (its id names its window's place) to answer again.")
    elif st.button(f"Review the {len(queue):,} disagreements in Inspect", key="reviewers_open",
                   type="primary", help="Inspect walks the queue: the most even splits first."):
        order = store.index_of(queue["id"])
        ui.open_in_inspect(int(order[0]), order)

settled = agreement.settled_labels(history)
st.subheader("Labels to train on")
counts = settled["settled"].value_counts()
changed = settled[(settled["label"] >= 0)]
changed = changed[labels.reindex(changed["id"]).to_numpy() != changed["label"].to_numpy()]
st.markdown(f"{counts.get('agreed', 0):,} agreed · {counts.get('majority', 0):,} by majority · "
            f"{counts.get('conflict', 0):,} in conflict (left out) · {counts.get('unsure', 0):,} only unsure "
            f"(keep the given label) · **{len(changed):,} differ from the given label**")
st.caption(f"The rule: {agreement.RULE} Train with them: `python -m pcam_core train --labels "
           "reviewed_labels.csv --exclude-ids conflicts.csv`.")
cols = st.columns(3)
cols[0].download_button("Settled labels (CSV)",
                        settled[settled["label"] >= 0][["id", "label"]].to_csv(index=False),
                        file_name="reviewed_labels.csv", mime="text/csv", on_click="ignore",
                        key="reviewers_labels")
cols[1].download_button("Ties to leave out (CSV, for --exclude-ids)",
                        settled[settled["settled"] == "conflict"][["id"]].to_csv(index=False),
                        file_name="conflicts.csv", mime="text/csv", on_click="ignore",
                        key="reviewers_exclude")
cols[2].download_button("Agreement tables (CSV)",
                        pd.concat([people.assign(table="reviewer"), pairs.assign(table="pair")]).to_csv(
                            index=False),
                        file_name="reviewer_agreement.csv", mime="text/csv", on_click="ignore",
                        key="reviewers_export")
