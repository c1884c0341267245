"""Submit: predict the test patches, check the file as Kaggle would, and download it."""

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app.compute import scoring
from app.widgets import sidebar, ui
from pcam_core import runs
from pcam_core.inference.submission import build_submission, validate_submission

ui.header("Submit", "A Kaggle submission: one tumour probability per test patch (probabilities, not 0/1 "
                    "labels, since Kaggle scores ROC AUC). Several models are averaged.")
ctx = sidebar.context()
store = ctx.store
if "test" not in store.split_names():
    st.warning(f"{store.root.name} has no test patches to submit "
               f"(its splits: {', '.join(store.split_names())}).")
    st.stop()
registry = runs.list_runs(runs.runs_dir())
registry = registry[registry["checkpoint"]]
if registry.empty:
    st.info("No trained model yet: train one on the Train page.")
    st.stop()

names = dict(zip(registry["run_id"], registry["path"], strict=True))
default = [ctx.run.name] if ctx.run is not None and ctx.run.name in names else list(names)[:1]
row = st.columns([3, 1])
chosen = row[0].multiselect("Models", list(names), default=default, key="submit_models",
                            help="More than one: their probabilities are averaged (an ensemble).")
tta = ctx.tta
row[1].metric("TTA views", tta, help="Set in the sidebar: each patch is scored under this many flips and "
                                      "rotations and averaged. Kaggle entries usually use 8.")
if not chosen:
    st.info("Choose at least one model.")
    st.stop()
others = [c for c in chosen if registry.set_index("run_id").loc[c, "data"] != ctx.dataset_key]
if others:
    st.warning(f"Trained on another dataset than this one: {', '.join(others)}. Their probabilities may mean "
               f"little here.")

if st.button("Predict the test patches", type="primary", key="submit_predict", icon=":material/play_arrow:"):
    st.session_state["submit_request"] = (tuple(chosen), tta)
if st.session_state.get("submit_request") != (tuple(chosen), tta):
    st.caption(f"{len(store.split_indices('test')):,} test patches; predictions are cached, so a second "
               "request for the same models is instant.")
    st.stop()

preds = scoring.predictions(store, [Path(names[c]) for c in chosen], "test", tta)
try:
    table = build_submission(preds, store)
except ValueError as e:
    st.error(f"Cannot build the submission: {e}")
    st.stop()
problems = validate_submission(table, store)
if problems:
    st.error("The validator found problems:\n\n" + "\n".join(f"- {p}" for p in problems))
else:
    st.success(f"Valid: {len(table):,} rows, ids match the test set, probabilities in [0, 1].")

left, right = st.columns([3, 2])
counts, edges = np.histogram(table["label"], bins=40, range=(0, 1))
fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=1 / 40,
                       marker_color=ui.LABEL_COLOURS["tumour"]))
fig.update_layout(height=300, margin=dict(t=30, b=10), title="Predicted P(tumour) on the test patches",
                  xaxis_title="P(tumour)", yaxis_title="patches")
left.plotly_chart(fig, key="submit_hist", config={"displaylogo": False})
with right:
    st.metric("Predicted tumour at 0.5", f"{(table['label'] >= 0.5).mean():.1%}")
    st.dataframe(table.head(8), hide_index=True, key="submit_preview")
    st.download_button("Download submission.csv", table.to_csv(index=False, float_format="%.8g"),
                       file_name="submission.csv", mime="text/csv", type="primary", on_click="ignore",
                       disabled=bool(problems), key="submit_download", icon=":material/download:")
