"""Evaluate: ROC and PR curves, a live threshold with its confusion matrix, calibration, worst mistakes."""

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app.compute import scoring
from app.widgets import sidebar, ui
from pcam_core import runs
from pcam_core.inference import metrics

PLOT = {"displaylogo": False}
LAYOUT = dict(height=340, margin=dict(t=40, b=10, l=10, r=10), showlegend=False)

ui.header("Evaluate", "How well the sidebar's model separates tumour from normal on labelled patches. "
                      "Move the threshold to trade sensitivity against specificity; click a mistake to "
                      "inspect it.")
ctx = sidebar.context()
sidebar.warn_if_other_data(ctx)
store = ctx.store
if ctx.run is None:
    st.info("Choose a trained model in the sidebar (train one on the Train page).")
    st.stop()
HELD_OUT = "held-out validation patches of this run"
run, mtime = ui.model_key(ctx.run)
held_out = ui.holdout(run, mtime, store, store.fingerprint)
choices = {HELD_OUT: "holdout"} if held_out is not None else {}
choices |= {s: s for s in store.split_names() if store.has_labels(s)}
if not choices:
    st.warning("This dataset has no labelled patches to evaluate on.")
    st.stop()

row = st.columns([2, 1, 3])
split = row[0].selectbox("Patches", list(choices), key="eval_split",
                         help="A whole split includes the patches the model trained on and scores "
                              "optimistically; the run's held-out validation patches do not.")
row[1].metric("TTA views", ctx.tta, help="Set in the sidebar, for every page.")
if choices[split] == "holdout" and not ui.run_config(run, mtime).get("groups"):
    st.caption("This run drew its validation patches at random, so patches of one slide may sit on both "
               "sides and the held-out AUC is optimistic; `train --groups` holds out whole slides.")
if choices[split] == "holdout":
    ui.warn_if_leaking(store, held_out)
preds = scoring.predictions(store, [ctx.run], choices[split], ctx.tta)  # held out: scores only those patches
y, p = preds["label"].to_numpy(), preds["prob"].to_numpy()
try:
    head = ui.headline_metrics(y, p)
except ValueError as e:
    st.error(f"Cannot evaluate on {split}: {e}")
    st.stop()

cols = st.columns([1, 1.4, 1, 1, 1])  # the interval's column is wider: nothing cut off at 1400 px
cols[0].metric("ROC AUC", f"{head['roc_auc']:.4f}",
               help="Kaggle's metric: the chance that a random tumour patch gets a higher P(tumour) than a "
                    "random normal one (0.5 is guessing, 1 is perfect ranking).")
cols[1].metric("95% interval", f"{head['ci'][0]:.3f}–{head['ci'][1]:.3f}",
               help="Where the ROC AUC would fall on another set of patches like these (bootstrap, 1,000 "
                    "resamples).")
cols[2].metric("PR AUC", f"{head['pr_auc']:.4f}",
               help="Area under precision (called tumour and truly tumour) against sensitivity; it drops "
                    "where false positives crowd the tumour calls.")
cols[3].metric("ECE", f"{head['ece']:.3f}",
               help="Expected calibration error: how far P(tumour) is from how often tumour is really "
                    "there. Of patches at P about 0.8, 80% should be tumour; ECE averages the gap over 10 "
                    "bins (0 is perfect).")
cols[4].metric("Patches", f"{len(y):,}", help=f"{int(y.sum()):,} tumour")

threshold = st.slider("Threshold", 0.0, 1.0, 0.5, 0.01, key="eval_threshold",
                      help="P(tumour) at or above it counts as tumour. Youden's best cut: "
                           f"{head['youden']:.2f}.")
rates = metrics.at_threshold(y, p, threshold)
counts = metrics.confusion(y, p, threshold)
cols = st.columns(4)
cols[0].metric("Sensitivity", f"{rates['sensitivity']:.3f}", help="Tumour patches caught.")
cols[1].metric("Specificity", f"{rates['specificity']:.3f}", help="Normal patches cleared.")
cols[2].metric("Precision", f"{rates['precision']:.3f}")
cols[3].metric("Accuracy", f"{rates['accuracy']:.3f}")

roc, pr, confusion, reliability = st.columns(4)
curve = metrics.roc_points(y, p)
here = {"fpr": 1 - rates["specificity"], "tpr": rates["sensitivity"]}  # the threshold's own point
fig = go.Figure([
    go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", line_color=ui.LABEL_COLOURS["tumour"]),
    go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999")),
    go.Scatter(x=[here["fpr"]], y=[here["tpr"]], mode="markers", marker=dict(size=11, color="#222")),
])
roc.plotly_chart(fig.update_layout(title="ROC", xaxis_title="1 - specificity", yaxis_title="sensitivity",
                                   **LAYOUT), key="eval_roc", config=PLOT)
curve = metrics.pr_points(y, p)
fig = go.Figure(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines",
                           line_color=ui.LABEL_COLOURS["normal"]))
pr.plotly_chart(fig.update_layout(title="Precision-recall", xaxis_title="recall", yaxis_title="precision",
                                  **LAYOUT), key="eval_pr", config=PLOT)
grid = [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]]
fig = go.Figure(go.Heatmap(z=grid, x=["pred. normal", "pred. tumour"], y=["normal", "tumour"], text=grid,
                           texttemplate="%{text:,}", colorscale="Purples", showscale=False))
confusion.plotly_chart(fig.update_layout(title=f"Confusion at {threshold:.2f}", yaxis_autorange="reversed",
                                         **LAYOUT), key="eval_confusion", config=PLOT)
table = metrics.calibration(y, p)
fig = go.Figure([go.Bar(x=(table["lo"] + table["hi"]) / 2, y=table["frac_positive"], width=0.09,
                        marker_color=ui.LABEL_COLOURS["tumour"], customdata=table["count"],
                        hovertemplate="predicted %{x:.2f}: %{y:.2f} tumour (%{customdata:,} patches)"),
                 go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"))])
reliability.plotly_chart(fig.update_layout(title="Reliability", xaxis_title="predicted P(tumour)",
                                           yaxis_title="observed tumour share", **LAYOUT),
                         key="eval_reliability", config=PLOT)

for title, wrong, descending in (("Top false positives", (y == 0) & (p >= threshold), True),
                                 ("Top false negatives", (y == 1) & (p < threshold), False)):
    st.subheader(title)
    mistakes = preds[wrong].sort_values("prob", ascending=not descending)
    if mistakes.empty:
        st.caption("None at this threshold.")
        continue
    shown = mistakes.head(8)
    key = "eval_fp" if descending else "eval_fn"
    chosen = ui.patch_grid(store, shown["index"].to_numpy(), [f"p {v:.3f}" for v in shown["prob"]],
                           button_key=key)
    if chosen is not None:
        ui.open_in_inspect(chosen, mistakes["index"].to_numpy())
    st.caption(f"{len(mistakes):,} in all; Inspect walks through them from the worst.")


@st.cache_data(max_entries=16)
def compared(labels, probs_a, probs_b) -> dict:
    return metrics.compare_aucs(labels, probs_a, probs_b)


st.subheader("Compare with another run")
registry = runs.list_runs(runs.runs_dir())
others = registry[registry["checkpoint"] & (registry["data"] == ctx.dataset_key)
                  & (registry["path"] != str(ctx.run))]
if others.empty:
    st.caption("No other run on this dataset yet: train one (for example on the reviewers' labels) to "
               "compare the two on the patches both held out.")
    st.stop()
other = st.selectbox("Other run", others["run_id"].tolist(), key="eval_other",
                     help="Both runs score the patches neither trained on, with the sidebar's TTA views.")
other_run = Path(others.set_index("run_id").loc[other, "path"])
if ui.holdout(*ui.model_key(other_run), store, store.fingerprint) is None or held_out is None:
    st.caption("One of the runs does not say which patches it held out; it cannot be compared fairly.")
    st.stop()
mine = scoring.predictions(store, [ctx.run], "holdout", ctx.tta)
theirs = scoring.predictions(store, [other_run], "holdout", ctx.tta)[["id", "prob"]]
both = mine.merge(theirs, on="id", suffixes=("", "_other"))
both = both[both["label"] >= 0]
if both.empty or len(set(both["label"])) < 2:
    st.warning("The two runs held out no common patches of both classes: train them with the same seed and "
               "validation share (or the same --val-ids) to compare them.")
    st.stop()
result = compared(both["label"].to_numpy(), both["prob"].to_numpy(), both["prob_other"].to_numpy())
cols = st.columns(3)  # each interval under its number, in the small print a long one fits in
cols[0].metric(ctx.run.name, f"{result['auc_a']:.4f}", delta_color="off", delta_arrow="off",
               delta=f"95% CI {result['ci_a'][0]:.3f}–{result['ci_a'][1]:.3f}", help="ROC AUC")
cols[1].metric(other, f"{result['auc_b']:.4f}", delta_color="off", delta_arrow="off",
               delta=f"95% CI {result['ci_b'][0]:.3f}–{result['ci_b'][1]:.3f}", help="ROC AUC")
low, high = result["diff_ci"]
cols[2].metric("Difference (other - this)", f"{result['diff']:+.4f}", delta_color="off", delta_arrow="off",
               delta=f"95% CI {low:+.4f} to {high:+.4f}",
               help="Paired bootstrap: both runs are scored on the same 1,000 resamples of the patches.")
differ = both[(both["prob"] >= 0.5) != (both["prob_other"] >= 0.5)]
st.caption(f"On {len(both):,} patches both held out. "
           + ("The interval excludes 0: the difference is more than the luck of the draw. "
              if low > 0 or high < 0 else
              "The interval includes 0: on these patches the runs are not told apart. ")
           + f"{len(differ):,} patches get different calls at 0.5.")
if len(differ):
    st.dataframe(differ.rename(columns={"prob": f"P {ctx.run.name}", "prob_other": f"P {other}"})
                 .drop(columns=["index", "spread"], errors="ignore"), hide_index=True, key="eval_differ")
    if st.button(f"Inspect the {len(differ):,} patches they disagree on", key="eval_differ_open"):
        ui.open_in_inspect(int(differ["index"].iloc[0]), differ["index"].to_numpy())
