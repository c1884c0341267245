"""The shared sidebar: the dataset, the reviewer and the model, kept in a `Context` every page reads.

The entry file calls `sidebar()` on every run, before the page; a page calls `context()`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st

from app.widgets import identity, roots, ui
from app.widgets.identity import User
from pcam_core import runs
from pcam_core.data.readers import PatchStore, is_packed
from pcam_core.inference.infer import TTA_VIEWS

DEMO_LABEL, SAMPLE_LABEL, FOLDER_LABEL = "Built-in demo", "Kaggle sample", "Folder path"
NO_MODEL = "(no model)"


@dataclass
class Context:
    """What the sidebar chose, shared by every page."""

    store: PatchStore
    dataset_key: str  # the key of this dataset's verdicts: its resolved folder path
    reviewer: str  # the name kept with each verdict: the signed-in user's, else the one typed
    run: Path | None  # the chosen model's run folder, or None
    device: str
    run_data: str = ""  # the dataset folder the chosen model trained on ("" when unrecorded)
    tta: int = 1  # the views every probability on every page averages (Browse, Inspect, Evaluate, Submit)
    user: User = field(default_factory=lambda: User(""))  # who: verified by sign-in, or a typed name


def pack_with_progress(folder: Path, force: bool = False) -> str:
    """Packs a folder with a progress bar; returns the command's summary line.

    It runs as `python -m pcam_core pack` in a child process, not in the server: packing forks
    worker processes, and a fork of the multi-threaded Streamlit server can deadlock.
    """
    bar = st.progress(0.0, text=f"Packing {folder.name}: decoding every patch once")
    command = [sys.executable, "-m", "pcam_core", "pack", "--data", str(folder)]
    if force:
        command.append("--force")
    proc = subprocess.Popen(command, cwd=ui.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail = ""
    try:
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):  # tqdm: "... 2500/5500 [00:12<...]"
            tail = (tail + chunk.decode(errors="replace"))[-2000:]
            counts = re.findall(r"(\d+)/(\d+) \[", tail)
            if counts:
                done, total = map(int, counts[-1])
                text = f"Packing {folder.name}: {done:,} of {total:,} patches"
                bar.progress(done / max(total, 1), text=text)
    except BaseException:  # the page was left or rerun: stop the pack; the next visit packs again
        proc.terminate()
        raise
    summary = proc.stdout.read().decode(errors="replace").strip()
    bar.empty()
    if proc.wait() != 0:
        errors = [line for line in re.split(r"[\r\n]", tail) if line.startswith("error:")]
        raise ValueError(errors[-1].removeprefix("error: ") if errors else f"packing failed: {tail[-300:]}")
    return summary


def open_store(path: str | Path) -> PatchStore:
    """Opens a dataset folder (cached per folder and its modification time); the first open in a
    session packs a folder that has no current cache, with a progress bar."""
    folder = Path(path).expanduser().resolve()
    checked = st.session_state.setdefault("checked_folders", set())
    if str(folder) not in checked:
        if not is_packed(folder):
            pack_with_progress(folder)
        checked.add(str(folder))
    return ui.open_dataset(str(folder), folder.stat().st_mtime)


def dataset_picker() -> tuple[PatchStore, str]:
    """Sidebar choice of dataset: the demo, the real sample when present, or a typed folder."""
    demo = Path(os.environ.get("PCAM_DATA", ui.REPO / "data" / "demo"))
    # `make run DATA=...` starts the app on the user's own folder: name it, not "demo" (a demo set has masks)
    is_demo = (demo / "tumour_masks.npz").is_file() or not demo.is_dir()
    start_label = DEMO_LABEL if is_demo else f"Started with: {demo.name}"
    sample = os.environ.get("PCAM_SAMPLE_DIR")
    sources = [start_label] + ([SAMPLE_LABEL] if sample else []) + [FOLDER_LABEL]
    source = st.sidebar.radio("Dataset", sources, key="dataset_source", **KEPT)
    if source == FOLDER_LABEL:
        typed = st.sidebar.text_input("Folder", key="dataset_folder", **KEPT,
                                      placeholder="/data/histopathologic-cancer-detection",
                                      help="A Kaggle folder (train/, train_labels.csv), a PCam HDF5 "
                                           "folder or a folder of images. Nothing is written inside it: "
                                           "the decoded cache goes under ~/.cache/pcam-review "
                                           "(PCAM_CACHE_DIR chooses another place). The summary below "
                                           "names it.")
        if not typed.strip():
            st.info("Type a dataset folder in the sidebar, or pick the built-in demo.")
            st.stop()
        try:
            path = roots.readable(typed)
        except ValueError as e:
            st.error(str(e))
            st.stop()
    else:
        path = Path(sample) if source == SAMPLE_LABEL else demo
    if not path.is_dir():
        hint = " Run `make demo` to create it." if source == DEMO_LABEL else ""
        st.error(f"No dataset folder at {path}.{hint}")
        st.stop()
    try:
        store = open_store(path)
    except (ValueError, OSError) as e:
        st.error(f"Cannot open {path} as a dataset: {e}")
        st.stop()
    if source == FOLDER_LABEL:
        with st.sidebar.expander("Dataset summary", expanded=False):
            st.code(store.describe(), language=None)
    return store, str(store.root.resolve())


# The sidebar's choices live in the page's URL (?dataset_source=...&model=...&tta=8&reviewer=Ann):
# a reload, a bookmark or a second tab opened from the link comes back to the same dataset, model, views
# and name. The URL rather than a settings file, because one app may serve several reviewers, each in
# their own browser, and a file beside the verdict store would hand one reviewer's name to the next.
KEPT = dict(bind="query-params", persist_state="session")


def _pin_model() -> None:
    st.session_state["model_pinned"] = True


def _loads(run: Path) -> bool:
    try:
        ui.load_model(str(run), runs.checkpoint_mtime(run))
    except (ValueError, OSError):
        return False
    return True


def _default_model(table: pd.DataFrame, dataset_key: str, options: list[str]) -> str | None:
    """Sets the default model while none is in use (and the reader did not choose none): the newest
    finished run on this dataset whose checkpoint loads, else the newest that loads. A model in use stays
    until the reader changes it, even when a newer run finishes; returns that newest finished run."""
    mine = table[table["data"] == dataset_key]
    finished = mine["state"] == "finished"
    current = st.session_state.get("model_choice")
    if current not in options or (current == NO_MODEL and not st.session_state.get("model_pinned")):
        candidates = [*mine.index[finished], *mine.index[~finished]]
        st.session_state["model_choice"] = next(
            (run_id for run_id in candidates if _loads(Path(table.loc[run_id, "path"]))), NO_MODEL)
    return next(iter(mine.index[finished]), None)


def model_picker(dataset_key: str) -> tuple[Path | None, str]:
    """Sidebar choice of a trained model among the runs that have a checkpoint: those trained on this
    dataset first, newest first, then the others, marked with the data they learned from.

    Until the user picks one, it follows the newest finished run on this dataset whose checkpoint loads
    (else the newest such run that loads), so a model trained on the Train page is used everywhere as
    soon as it finishes; a model of another dataset, or a broken checkpoint, is never the default.

    Returns:
        (the run folder or None, the dataset folder that run trained on).
    """
    registry = runs.list_runs(runs.runs_dir())
    table = registry[registry["checkpoint"]]
    here = table["data"] == dataset_key
    table = pd.concat([table[here], table[~here]]).set_index("run_id")
    options = [NO_MODEL, *table.index]
    if "model_choice" not in st.session_state and st.query_params.get("model") in options:
        st.session_state["model_choice"] = st.query_params["model"]  # a reload keeps the user's pick
        st.session_state["model_pinned"] = True
    newer = _default_model(table, dataset_key, options)

    def label(run_id: str) -> str:
        """The AUC first, then the run's name: a long name is cut at the sidebar's edge, not the AUC."""
        if run_id == NO_MODEL:
            return run_id
        auc, row = table["best_auc"].get(run_id), table.loc[run_id]
        text = run_id if pd.isna(auc) else f"AUC {auc:.3f} · {run_id}"
        return text if row["data"] == dataset_key else f"({row['dataset']}) {text}"

    choice = st.sidebar.selectbox("Model", options, key="model_choice", format_func=label,
                                  persist_state="session",
                                  on_change=_pin_model, help="Trained on the Train page; its predictions "
                                                             "feed Browse, Inspect, Evaluate and Submit.")
    # the model a user picked goes in the URL by run id (not bound: the option's label holds its AUC, which
    # changes while a run trains); the default one does not, so a new run still becomes the default
    if st.session_state.get("model_pinned"):
        st.query_params["model"] = choice
    elif "model" in st.query_params:
        del st.query_params["model"]
    if choice != NO_MODEL:  # the whole of what the option names, in lines that wrap
        row = table.loc[choice]
        auc = "" if pd.isna(row["best_auc"]) else f", best validation AUC {row['best_auc']:.3f}"
        st.sidebar.caption(f"{choice}: {row['model']}, {row['epoch']} of {row['epochs']} epochs on "
                           f"{row['dataset']}{auc} ({row['state']})")
        if newer is not None and newer != choice and table.loc[newer, "started"] > row["started"]:
            st.sidebar.caption(f"A newer run on this dataset, {newer}, has finished: choose it above to use "
                               "it.")
    if choice == NO_MODEL:
        training = registry["run_id"][registry["state"].isin(runs.ACTIVE_STATES)]
        if len(training):
            st.sidebar.caption(f"{training.iloc[0]} is training (see the Train page); it is used here "
                               "from the end of its first epoch.")
        return None, ""
    return Path(table.loc[choice, "path"]), table.loc[choice, "data"]


def warn_if_other_data(ctx: Context) -> None:
    """On a page that scores: says so when the chosen model learned from another dataset."""
    if ctx.run is not None and ctx.run_data != ctx.dataset_key:
        where = Path(ctx.run_data).name if ctx.run_data else "data it did not record"
        st.warning(f"The model {ctx.run.name} was trained on {where}, not on this dataset "
                   f"({Path(ctx.dataset_key).name}): its probabilities may mean little here. Choose a model "
                   f"trained on this dataset in the sidebar, or train one on the Train page.")


def sidebar() -> Context:
    """Renders the shared sidebar and keeps its choices for the pages."""
    store, key = dataset_picker()
    if st.session_state.get("inspect_dataset") != key:  # Inspect's place and order belong to one dataset
        st.session_state["inspect_dataset"] = key
        st.session_state.pop("inspect_index", None)
        st.session_state.pop("inspect_order", None)
    user = identity.signed_in()
    if user is not None:  # sign-in: who is known, nothing to type
        st.sidebar.markdown(f"Signed in as **{ui.as_text(user.name)}**")
        st.sidebar.button("Sign out", key="sign_out", icon=":material/logout:", on_click=st.logout)
        reviewer = user.name
    else:
        reviewer = st.sidebar.text_input("Reviewer", key="reviewer", **KEPT, placeholder="your name",
                                         help="Recorded with every verdict you give (a typed name, kept as "
                                              "unverified).")
        user = identity.current_user(reviewer)
    run, run_data = model_picker(key)
    tta = st.sidebar.selectbox("TTA views", TTA_VIEWS, key="tta", **KEPT,
                               disabled=run is None,
                               help="Each probability on every page is the mean over this many flips and "
                                    "rotations of the patch (test-time augmentation): 1 is fastest, 8 the "
                                    "steadiest. Browse, Inspect, Evaluate and Submit all use it.")
    device = ui.device_label()
    st.sidebar.caption(f"Device: {device}")
    ctx = Context(store=store, dataset_key=key, reviewer=reviewer.strip(), run=run, device=device,
                  run_data=run_data, tta=int(tta), user=user)
    st.session_state["context"] = ctx
    return ctx


def context() -> Context:
    """The sidebar's choices for this run (the entry file renders the sidebar before the page)."""
    return st.session_state.get("context") or sidebar()
