"""Train: fill a TrainConfig, run it as a background job, watch it, stop or resume it; the run registry."""

import json
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app.widgets import downloads, reviews, sidebar, ui
from pcam_core import runs
from pcam_core.inference.infer import held_out_auc
from pcam_core.models.export import check_out, export_wsinfer
from pcam_core.models.registry import list_models
from pcam_core.review import agreement
from pcam_core.runs import jobs
from pcam_core.runs.config import SCHEDULES, TrainConfig
from pcam_core.training import crossval

ui.header("Train", "Train a classifier on this dataset as a background job: it keeps running when you "
                   "close the tab, and its checkpoints appear in the sidebar's model list. One job runs "
                   "per device.")
ctx = sidebar.context()
device = ui.device_spec()
busy = jobs.active_job(runs.runs_dir(), device)
pairs = ui.duplicate_pairs(ctx.store)
if pairs is not None and len(inside := pairs[(pairs["a_split"] == "train") & (pairs["b_split"] == "train")]):
    copies = len(set(inside["a_id"]) | set(inside["b_id"]))
    st.warning(f"{copies:,} training patches have an exact or near copy among the training patches "
               f"({len(inside):,} pairs, Dataset page): a drawn validation split can put a copy on each "
               "side, and its AUC is then optimistic.")

settled = agreement.settled_labels(reviews.verdict_history(ctx.dataset_key))
settled = settled[settled["id"].isin(set(ctx.store.ids))]
n_settled, n_ties = int((settled["label"] >= 0).sum()), int((settled["settled"] == "conflict").sum())
reviewed_summary = (f"Reviewers settled {n_settled:,} label(s); {n_ties:,} tie(s) would be left out."
                    if len(settled) else "No verdicts on this dataset yet.")


def reviewed_files(config: TrainConfig) -> tuple[TrainConfig, dict[str, str]]:
    """The run's config pointing at the reviewed labels, and those files for its folder (a snapshot of the
    verdicts it used, with the rule and the last verdict counted)."""
    run_dir = runs.new_run_dir(config)
    history = reviews.verdict_history(ctx.dataset_key)
    used = {"rule": agreement.RULE, "verdicts": len(history),
            "last_verdict_seq": int(history["seq"].max()) if len(history) else None,
            "settled": settled["settled"].value_counts().to_dict()}
    files = {"reviewed_labels.csv": settled[settled["label"] >= 0][["id", "label"]].to_csv(index=False),
             "reviewed_ties.csv": settled[settled["settled"] == "conflict"][["id"]].to_csv(index=False),
             "reviewed_labels.json": json.dumps(used, indent=1)}
    config = replace(config, out=str(run_dir), labels=str(run_dir / "reviewed_labels.csv"),
                     exclude_ids=str(run_dir / "reviewed_ties.csv"))
    return config, files


with st.form("train_form"):
    st.markdown(f"**New run** on `{ctx.store.root.name}` ({len(ctx.store):,} patches), device {ctx.device}")
    row = st.columns(4)
    models = list_models()
    model = row[0].selectbox("Model", models, index=models.index("base_cnn") if "base_cnn" in models else 0,
                             key="train_model", help="base_cnn: the reference notebook's small CNN (fast on "
                                                     "CPU). EfficientNets: stronger, slower.")
    epochs = row[1].number_input("Epochs", 1, 200, 3, key="train_epochs")
    batch_size = row[2].selectbox("Batch size", [32, 64, 128, 256, 512], index=2, key="train_batch")
    lr = row[3].number_input("Learning rate", 1e-5, 1.0, 2e-3, format="%.4f", key="train_lr")
    row = st.columns(4)
    pretrained = row[0].checkbox("ImageNet weights", key="train_pretrained",
                                 help="Transfer learning; works offline for efficientnet_lite0.")
    augment = row[1].checkbox("Augment", True, key="train_augment",
                              help="Random flips/rotations and stain jitter on every batch.")
    val_frac = row[2].slider("Validation share", 0.05, 0.5, 0.1, 0.05, key="train_val")
    crop = row[3].selectbox("Input", [96, 64, 48, 32], key="train_crop",
                            format_func=lambda c: "whole patch (96 px)" if c == 96 else f"centre {c} px")
    with st.expander("More options"):
        row = st.columns(4)
        schedule = row[0].selectbox("Schedule", SCHEDULES, key="train_schedule")
        jitter = row[1].slider("Stain jitter", 0.0, 0.3, 0.05, 0.01, key="train_jitter")
        patience = row[2].number_input("Early-stop patience (0: off)", 0, 50, 0, key="train_patience")
        seed = row[3].number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
        row = st.columns([1, 1, 2])
        folds = row[0].number_input("Cross-validation folds", 0, 10, 0, key="train_folds",
                                    help="0: one run. 2 or more: K runs, each holding out one fold, for an "
                                         "out-of-fold P(tumour) on every labelled patch; cleanlab then ranks "
                                         "the likely label errors (Browse: Likely mislabelled).")
        reviewed = row[1].checkbox("Use the reviewers' labels", key="train_reviewed",
                                   help=f"Train on the labels the reviewers settled on. {agreement.RULE}")
        row[2].caption(reviewed_summary)
    started = st.form_submit_button("Start training", type="primary",
                                    disabled=busy is not None or not ctx.user.may("run jobs"),
                                    icon=":material/play_arrow:")
if busy is not None:
    st.info(f"A job is running on {device} ({busy.name}); stop it or wait before starting another.")
if started:
    config = TrainConfig(data=str(ctx.store.root), model=model, pretrained=pretrained, epochs=int(epochs),
                         batch_size=int(batch_size), lr=float(lr), val_frac=float(val_frac), crop=int(crop),
                         augment=augment, jitter=float(jitter), schedule=schedule, patience=int(patience),
                         seed=int(seed), device=device)
    try:
        if folds >= 2:
            st.session_state["train_crossval"] = str(jobs.start_crossval(config, int(folds)))
            reviews.audit("job start", {"job": "crossval", "folder": st.session_state["train_crossval"],
                                        "model": model, "folds": int(folds), "data": str(ctx.store.root)})
        else:
            config, files = reviewed_files(config) if reviewed and len(settled) else (config, None)
            st.session_state["train_run"] = str(jobs.start(config, files))
            reviews.audit("job start", {"job": "training", "run": st.session_state["train_run"],
                                        "model": model, "data": str(ctx.store.root),
                                        "reviewers' labels": files is not None})
            if files is not None:  # the label snapshot this run trains on
                reviews.audit("labels for training", {"run": st.session_state["train_run"],
                                                      **json.loads(files["reviewed_labels.json"])})
    except ValueError as e:
        st.error(f"Could not start: {e}")
        st.stop()
    st.rerun()


@st.fragment(run_every=2)
def crossvals() -> None:
    """The cross-validations of this dataset: the fold training now, Stop / Resume, the result."""
    folders = crossval.list_folders(runs.runs_dir())
    if not folders:
        return
    st.subheader("Cross-validations")
    for folder in folders[:5]:
        now = crossval.progress(folder)
        cols = st.columns([4, 1])
        line = f"**{folder.name}**: {now['state']}, {now['folds']} folds of {now['model']}"
        if now["state"] == "finished":
            oof = crossval.read_oof(folder)
            from pcam_core.inference.metrics import roc_auc

            line += (f"; out-of-fold AUC {roc_auc(oof['label'].to_numpy(), oof['prob'].to_numpy()):.4f} on "
                     f"{len(oof):,} patches. Browse: Likely mislabelled lists cleanlab's flags.")
        elif now["fold"]:
            share, text = runs.progress(now["run"])
            line += f"; fold {now['fold']} of {now['folds']}: {text}"
        cols[0].markdown(line)
        if now["state"] == "running":
            cols[1].button("Stop", key=f"train_cv_stop_{folder.name}", icon=":material/stop:",
                           on_click=jobs.stop_crossval, args=(folder,))
        elif now["state"] == "stopped":
            cols[1].button("Resume", key=f"train_cv_resume_{folder.name}", icon=":material/replay:",
                           on_click=resume_crossval, args=(folder,),
                           disabled=jobs.active_job(runs.runs_dir(), device) is not None)


def resume_crossval(folder: Path) -> None:
    try:
        jobs.resume_crossval(folder)
    except ValueError as e:
        st.session_state["train_cv_error"] = f"Could not resume: {e}"


crossvals()
if st.session_state.get("train_cv_error"):
    st.error(st.session_state.pop("train_cv_error"))

registry = runs.list_runs(runs.runs_dir())
st.subheader("Runs")
if registry.empty:
    st.caption("No runs yet. Start one above: base_cnn for 3 epochs on the demo data takes a couple of "
               "minutes on two CPU cores.")
    st.stop()
picked = st.dataframe(
    registry.drop(columns=["path", "checkpoint", "data"]), hide_index=True, key="train_runs",
    on_select="rerun", selection_mode="single-row",
    column_config={"best_auc": st.column_config.NumberColumn("best AUC", format="%.4f"),
                   "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm"),
                   "run_id": "run"})
rows = picked.selection.rows
if rows:
    st.session_state["train_run"] = registry["path"].iloc[rows[0]]
current = st.session_state.get("train_run")
if current not in set(registry["path"]):
    current = str(busy) if busy is not None else registry["path"].iloc[0]
run = Path(current)


@st.fragment(run_every=2)
def live(run: Path) -> None:
    """Polls the run folder: progress, curves, and Stop/Resume; reruns the app when the job ends."""
    status = runs.status(run)
    state = status["state"]
    st.markdown(f"#### {run.name}: {state}")
    if state in runs.ACTIVE_STATES:
        share, text = runs.progress(status)
        timing = runs.timing(status)
        st.progress(share, text=text + (f" · {timing}" if timing else ""))
    if status["message"]:
        (st.error if state == "failed" else st.caption)(status["message"])
    table, sampled = runs.metrics(run), runs.steps(run)
    if len(table) or len(sampled):
        left, right = st.columns(2)
        layout = dict(height=260, margin=dict(t=30, b=10), xaxis_title="epoch")
        if len(table) >= 2 or not len(sampled):
            loss = go.Figure([go.Scatter(x=table["epoch"], y=table[c], name=c.replace("_", " "),
                                         mode="lines+markers") for c in ("train_loss", "val_loss")])
            left.plotly_chart(loss.update_layout(title="loss", **layout), key="train_loss_chart")
        else:  # before a second epoch ends, the loss as it is sampled during training
            loss = go.Figure(go.Scatter(x=sampled["step"], y=sampled["loss"], mode="lines"))
            loss.update_layout(title="training loss, sampled every few seconds",
                               **{**layout, "xaxis_title": "step"})
            left.plotly_chart(loss, key="train_step_chart")
        auc = go.Figure(go.Scatter(x=table["epoch"], y=table["val_auc"], mode="lines+markers"))
        auc.update_layout(title="validation ROC AUC", yaxis_range=[0, 1.02], **layout)
        right.plotly_chart(auc, key="train_auc_chart")
    if state in runs.ACTIVE_STATES:
        if st.button("Stop", key="train_stop", icon=":material/stop:", disabled=not ctx.user.may("run jobs"),
                     help="Saves a resumable checkpoint, then ends the job."):
            jobs.stop(run)
            reviews.audit("job stop", {"job": "training", "run": str(run)})
    elif state in ("stopped", "failed") and (run / "last.pt").is_file():
        busy_now = jobs.active_job(runs.runs_dir(), device)  # this fragment reruns alone: ask again
        if st.button("Resume", key="train_resume", icon=":material/replay:", disabled=busy_now is not None):
            try:
                jobs.resume(run, device)
            except ValueError as e:
                st.error(f"Could not resume: {e}")
            else:
                st.rerun(scope="app")  # the form above now shows the device as busy
    if jobs.log_tail(run):
        with st.expander("Job output (last lines)", expanded=state == "failed"):
            st.code(jobs.log_tail(run), language=None)
    previous = st.session_state.get(f"train_seen_{run.name}")
    st.session_state[f"train_seen_{run.name}"] = state
    if previous in runs.ACTIVE_STATES and state not in runs.ACTIVE_STATES:
        st.rerun(scope="app")  # the finished run's checkpoint joins the sidebar's model list


live(run)
with st.expander("Configuration of this run"):
    config_path = run / "config.json"
    st.json(json.loads(config_path.read_text()) if config_path.is_file() else {}, expanded=False)


def export_for_qupath(run: Path) -> None:
    """The run as a WSInfer model folder inside it (run/wsinfer), offered as a zip to download."""
    folder = run / "wsinfer"
    try:
        with st.spinner("Tracing the model and measuring its held-out AUC..."):
            export_wsinfer(run, check_out(folder), held_out_auc(str(run)))
    except (ValueError, OSError) as e:
        st.session_state["train_export_error"] = f"Not exported: {e}"
        return
    reviews.audit("export", {"what": "WSInfer model", "run": str(run), "to": str(folder)})


with st.expander("Export for QuPath (WSInfer)"):
    st.caption("A WSInfer model folder (config.json, TorchScript, a model card) that QuPath's WSInfer "
               "extension and `wsinfer run` load: one checkpoint, one view (no TTA, no ensemble). Same as "
               "`python -m pcam_core export --format wsinfer`.")
    finished = runs.checkpoint_path(run) is not None and not runs.status(run)["alive"]
    st.button("Make the WSInfer model", key="train_export_wsinfer", on_click=export_for_qupath, args=(run,),
              disabled=not finished or not ctx.user.may("export"),
              help=None if finished else "Wait for a checkpoint and the job's end.")
    if st.session_state.get("train_export_error"):
        st.error(st.session_state.pop("train_export_error"))
    exported = run / "wsinfer"
    if (exported / "config.json").is_file():
        archive = downloads.zipped_folder(str(exported), (exported / "config.json").stat().st_mtime)
        st.download_button("Download the WSInfer model (zip)", archive, file_name=f"{run.name}-wsinfer.zip",
                           mime="application/zip", key="train_export_download", on_click="ignore")


def rename(run: Path) -> None:
    try:
        name = st.session_state.get(f"train_name_{run.name}", "")
        st.session_state["train_run"] = str(runs.rename_run(run, name))
    except (ValueError, OSError) as e:
        st.session_state["train_manage_error"] = f"Not renamed: {e}"


def delete(run: Path) -> None:
    try:
        runs.delete_run(run)
    except (ValueError, OSError) as e:
        st.session_state["train_manage_error"] = f"Not deleted: {e}"
    else:
        st.session_state.pop("train_run", None)
        st.session_state["train_delete_sure"] = False


with st.expander("Rename or delete this run"):
    running = runs.status(run)["alive"]
    if running:
        st.caption("A running job cannot be renamed or deleted: stop it first.")
    cols = st.columns([3, 1, 2, 1])
    cols[0].text_input("New name", value=run.name, key=f"train_name_{run.name}", label_visibility="collapsed")
    cols[1].button("Rename", key="train_rename", on_click=rename, args=(run,), disabled=running)
    sure = cols[2].checkbox("Delete its checkpoints and files", key="train_delete_sure", disabled=running)
    cols[3].button("Delete", key="train_delete", on_click=delete, args=(run,), disabled=running or not sure,
                   type="primary" if sure else "secondary")
    if st.session_state.get("train_manage_error"):
        st.error(st.session_state.pop("train_manage_error"))
