"""Shared widgets and the one cache layer of the app (pcam_core never imports Streamlit).

The entry file calls `sidebar()` on every run: it picks the dataset, the reviewer and the model and
keeps them in a `Context` that each page reads with `context()`. Everything cached lives here:
`st.cache_resource` for open datasets and loaded models, `st.cache_data` for tables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app.images import ImageArray, with_centre_box
from pcam_core import jobs, review
from pcam_core.config import runs_dir
from pcam_core.data import PatchStore, detect_layout, open_dataset
from pcam_core.pack import cache_dir_for, load_pack
from pcam_core.review import ReviewStore

REPO = Path(__file__).resolve().parents[1]
DEMO_LABEL, SAMPLE_LABEL, FOLDER_LABEL = "Built-in demo", "Kaggle sample", "Folder path"
NO_MODEL = "(no model)"


@dataclass
class Context:
    """What the sidebar chose, shared by every page."""

    store: PatchStore
    dataset_key: str  # the key of this dataset's verdicts: its resolved folder path
    reviewer: str
    run: Path | None  # the chosen model's run folder, or None
    device: str


# ---- cached resources ----------------------------------------------------------------------------

@st.cache_resource(show_spinner="Opening the dataset")
def _open_store(path: str, mtime: float) -> PatchStore:
    return open_dataset(path)


@st.cache_resource
def _review_store(path: str) -> ReviewStore:
    return ReviewStore(path)


def review_store() -> ReviewStore:
    """The verdict store: $PCAM_REVIEW_DB, else models/reviews.sqlite (kept beside the checkpoints)."""
    return _review_store(os.environ.get("PCAM_REVIEW_DB") or str(REPO / "models" / "reviews.sqlite"))


@st.cache_resource
def device_label() -> str:
    """The device jobs and predictions run on: the GPU's name, or the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)"


def device_spec() -> str:
    return "cuda" if device_label().startswith("GPU") else "cpu"


def pack_with_progress(folder: Path, force: bool = False) -> str:
    """Packs a folder with a progress bar; returns the command's summary line.

    It runs as `python -m pcam_core pack` in a child process, not in the server: packing forks
    worker processes, and a fork of the multi-threaded Streamlit server can deadlock.
    """
    bar = st.progress(0.0, text=f"Packing {folder.name}: decoding every patch once")
    command = [sys.executable, "-m", "pcam_core", "pack", "--data", str(folder)]
    if force:
        command.append("--force")
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail = ""
    for chunk in iter(lambda: proc.stderr.read1(4096), b""):  # tqdm: "... 2500/5500 [00:12<...]"
        tail = (tail + chunk.decode(errors="replace"))[-2000:]
        counts = re.findall(r"(\d+)/(\d+) \[", tail)
        if counts:
            done, total = map(int, counts[-1])
            bar.progress(done / max(total, 1), text=f"Packing {folder.name}: {done:,} of {total:,} patches")
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
        if detect_layout(folder) != "pcam" and load_pack(cache_dir_for(folder), None, root=folder) is None:
            pack_with_progress(folder)
        checked.add(str(folder))
    return _open_store(str(folder), folder.stat().st_mtime)


def forget_store() -> None:
    """Drops the open datasets, after their cache was rebuilt."""
    _open_store.clear()


def predictions(ctx: Context, split: str, tta: int = 1,
                runs: list[Path] | None = None) -> pd.DataFrame | None:
    """Predictions for a split (id, index, prob, spread, label) by the sidebar's model, or by `runs`
    averaged; None without a model. The first time shows a progress bar; infer caches them on disk."""
    runs = runs if runs is not None else [ctx.run] if ctx.run is not None else []
    if not runs:
        return None
    from pcam_core import infer

    bar = st.empty()
    names = ", ".join(r.name for r in runs)

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Scoring {split} patches with {names}: {done:,} of {total:,}")

    try:
        table = infer.predictions_table([str(r) for r in runs], ctx.store, split, tta=tta, progress=progress)
    except (ValueError, FileNotFoundError) as e:
        st.error(f"The model {names} could not score this dataset: {e}")
        st.stop()
    bar.empty()
    return table


@st.cache_resource(max_entries=8)
def load_model(run: str, mtime: float, purpose: str = "cam"):
    """(model, checkpoint) on the app's device, kept while its checkpoint file is unchanged.

    Prediction and CAM get separate copies: `infer.predict` converts a model's weights inside
    inference mode, after which autograd (which CAM needs) refuses them.
    """
    from pcam_core.models import load_checkpoint, resolve_device

    return load_checkpoint(run, device=resolve_device("auto"))


@st.cache_data(max_entries=256)
def tta_views(run: str, mtime: float, image: np.ndarray) -> np.ndarray:
    """The tumour probability of one (96, 96, 3) patch under each of the 8 dihedral views."""
    from pcam_core import infer

    return infer.predict(load_model(run, mtime, "predict"), ImageArray(image[None]), [0], tta=8)["views"][0]


@st.cache_data(max_entries=256)
def cam_map(run: str, mtime: float, image: np.ndarray, method: str, layer: str | None,
            target: str) -> np.ndarray:
    """The (96, 96) CAM of one patch in [0, 1]."""
    from pcam_core import cam

    model, ckpt = load_model(run, mtime)
    return cam.cams_for_images(model, ckpt, image[None], method=method, layer=layer, target=target)[0]


@st.cache_data(max_entries=16)
def cam_layers(run: str, mtime: float) -> list[str]:
    """The feature-map layers a CAM can target, deepest last."""
    from pcam_core import cam

    model, ckpt = load_model(run, mtime)
    return cam.layer_names(model, ckpt.get("config", {}).get("crop", 96))


# ---- the sidebar ---------------------------------------------------------------------------------

def dataset_picker() -> tuple[PatchStore, str]:
    """Sidebar choice of dataset: the demo, the real sample when present, or a typed folder."""
    demo = Path(os.environ.get("PCAM_DATA", REPO / "data" / "demo"))
    # `make run DATA=...` starts the app on the user's own folder: name it, not "demo" (a demo set has masks)
    is_demo = (demo / "tumour_masks.npz").is_file() or not demo.is_dir()
    start_label = DEMO_LABEL if is_demo else f"Started with: {demo.name}"
    sample = os.environ.get("PCAM_SAMPLE_DIR")
    sources = [start_label] + ([SAMPLE_LABEL] if sample else []) + [FOLDER_LABEL]
    source = st.sidebar.radio("Dataset", sources, key="dataset_source", persist_state="session")
    if source == FOLDER_LABEL:
        typed = st.sidebar.text_input("Folder", key="dataset_folder", persist_state="session",
                                      placeholder="/data/histopathologic-cancer-detection",
                                      help="A Kaggle folder (train/, train_labels.csv), a PCam HDF5 "
                                           "folder or a folder of images. It is only read.")
        if not typed.strip():
            st.info("Type a dataset folder in the sidebar, or pick the built-in demo.")
            st.stop()
        path = Path(typed.strip()).expanduser()
    else:
        path = Path(sample) if source == SAMPLE_LABEL else demo
    if not path.is_dir():
        hint = " Run `make demo` to create it." if source == DEMO_LABEL else ""
        st.error(f"No dataset folder at {path}.{hint}")
        st.stop()
    try:
        store = open_store(path)
    except (ValueError, FileNotFoundError, PermissionError, OSError) as e:
        st.error(f"Cannot open {path} as a dataset: {e}")
        st.stop()
    if source == FOLDER_LABEL:
        with st.sidebar.expander("Dataset summary", expanded=False):
            st.code(store.describe(), language=None)
    return store, str(store.root.resolve())


def _pin_model() -> None:
    st.session_state["model_pinned"] = True


def model_picker() -> Path | None:
    """Sidebar choice of a trained model among the runs that have a checkpoint, newest first.

    Until the user picks one, it follows the newest finished run, so a model trained on the Train
    page is used everywhere as soon as it finishes.
    """
    runs = jobs.list_runs(runs_dir())
    runs = runs[runs["checkpoint"]].set_index("run_id")
    options = [NO_MODEL, *runs.index]
    if not st.session_state.get("model_pinned") or st.session_state.get("model_choice") not in options:
        finished = runs.index[runs["state"] == "finished"]
        st.session_state["model_choice"] = finished[0] if len(finished) else options[min(1, len(runs))]

    def label(run_id: str) -> str:
        auc = runs["best_auc"].get(run_id)
        return run_id if run_id == NO_MODEL or pd.isna(auc) else f"{run_id} · AUC {auc:.3f}"

    choice = st.sidebar.selectbox("Model", options, key="model_choice", format_func=label,
                                  on_change=_pin_model, help="Trained on the Train page; its predictions "
                                                             "feed Browse, Inspect, Evaluate and Submit.")
    return None if choice == NO_MODEL else Path(runs.loc[choice, "path"])


def sidebar() -> Context:
    """Renders the shared sidebar and keeps its choices for the pages."""
    store, key = dataset_picker()
    if st.session_state.get("inspect_dataset") != key:  # Inspect's place and order belong to one dataset
        st.session_state["inspect_dataset"] = key
        st.session_state.pop("inspect_index", None)
        st.session_state.pop("inspect_order", None)
    reviewer = st.sidebar.text_input("Reviewer", key="reviewer", persist_state="session",
                                     placeholder="your name", help="Recorded with every verdict you give.")
    run = model_picker()
    device = device_label()
    st.sidebar.caption(f"Device: {device}")
    ctx = Context(store=store, dataset_key=key, reviewer=reviewer.strip(), run=run, device=device)
    st.session_state["context"] = ctx
    return ctx


def context() -> Context:
    """The sidebar's choices for this run (the entry file renders the sidebar before the page)."""
    return st.session_state.get("context") or sidebar()


# ---- small shared widgets ------------------------------------------------------------------------

def header(title: str, help_text: str) -> None:
    st.title(title)
    st.caption(help_text)


def patch_grid(store: PatchStore, indices: np.ndarray, captions: list[str], columns: int = 8,
               button_key: str | None = None) -> int | None:
    """Shows patches in a grid with the centre box; with `button_key`, returns the index whose
    Inspect button was pressed."""
    images = store.batch(np.asarray(indices))  # (N, 96, 96, 3) uint8
    chosen = None
    for start in range(0, len(indices), columns):
        cols = st.columns(columns, gap="small")
        for col, i in zip(cols, range(start, min(start + columns, len(indices))), strict=False):
            with col:
                st.image(with_centre_box(images[i], 2), caption=captions[i], width="stretch",
                         output_format="PNG")
                if button_key and st.button("Inspect", key=f"{button_key}_{indices[i]}", width="stretch"):
                    chosen = int(indices[i])
    return chosen


def open_in_inspect(index: int, order: np.ndarray) -> None:
    """Goes to the Inspect page on one patch; previous/next there walk `order` (store indices)."""
    st.session_state["inspect_index"] = int(index)
    st.session_state["inspect_order"] = np.asarray(order, dtype=np.int64)
    st.switch_page("views/inspect.py")


def label_name(label: int) -> str:
    return {1: "tumour", 0: "normal"}.get(int(label), "unlabelled")


# ---- tables behind the charts (cached per dataset fingerprint) -----------------------------------

LABEL_COLOURS = {"tumour": "#B5305F", "normal": "#3F6FA0", "unlabelled": "#9A9A9A"}
STAT_NAMES = {"brightness": "Brightness", "saturation": "Saturation", "tissue_frac": "Tissue fraction",
              "mean_r": "Mean red", "mean_g": "Mean green", "mean_b": "Mean blue",
              "std_r": "Std red", "std_g": "Std green", "std_b": "Std blue"}


@st.cache_data(max_entries=64)
def class_histogram(_store: PatchStore, fingerprint: str, split: str | None, column: str,
                    bins: int = 50) -> pd.DataFrame:
    """Share of each class's patches per bin of one stats column: columns left, right, label, share."""
    stats = _store.stats if split is None else _store.stats[_store.stats["split"] == split]
    values = stats[column].to_numpy(np.float64)
    edges = np.histogram_bin_edges(values, bins=bins)
    rows = []
    for label in np.unique(stats["label"].to_numpy()):
        counts, _ = np.histogram(values[stats["label"].to_numpy() == label], bins=edges)
        rows.append(pd.DataFrame({"left": edges[:-1], "right": edges[1:], "label": label_name(label),
                                  "share": counts / max(counts.sum(), 1)}))
    return pd.concat(rows, ignore_index=True)


@st.cache_data(max_entries=16)
def stats_sample(_store: PatchStore, fingerprint: str, split: str | None, n: int = 20_000,
                 seed: int = 0) -> pd.DataFrame:
    """At most `n` rows of the stats table, drawn at random (the stain scatter of 220k patches)."""
    stats = _store.stats if split is None else _store.stats[_store.stats["split"] == split]
    if len(stats) > n:
        stats = stats.sample(n, random_state=seed)
    return stats.assign(label_name=stats["label"].map(label_name))


# ---- browse and inspect --------------------------------------------------------------------------

def browse_table(ctx: Context, split: str, tta: int) -> pd.DataFrame:
    """One row per patch of a split: index, id, label, verdict; with a model prob, spread, priority, loss."""
    store = ctx.store
    idx = store.split_indices(split)
    table = pd.DataFrame({"index": idx, "id": store.ids[idx], "label": store.labels[idx]})
    verdicts = review_store().latest(ctx.dataset_key)
    current = dict(zip(verdicts["patch_id"], verdicts["verdict"], strict=True))
    table["verdict"] = table["id"].map(current) if current else None
    preds = predictions(ctx, split, tta)
    if preds is not None:
        prob, spread = np.full(len(store), np.nan), np.zeros(len(store))
        prob[preds["index"].to_numpy()] = preds["prob"].to_numpy()
        spread[preds["index"].to_numpy()] = preds["spread"].to_numpy()
        table["prob"], table["spread"] = prob[idx], spread[idx]
        table["priority"] = review.priority(table["prob"], table["spread"])
        p_true = np.where(table["label"] == 1, table["prob"], 1.0 - table["prob"])
        table["loss"] = np.where(table["label"] >= 0, -np.log(np.clip(p_true, 1e-7, 1.0)), np.nan)
    return table


VERDICT_MARKS = {"agree": "✓ agree", "disagree": "✗ disagree", "unsure": "? unsure"}


def tile_captions(tiles: pd.DataFrame) -> list[str]:
    """Short captions for grid tiles: true label, model probability, current verdict."""
    captions = []
    for row in tiles.itertuples():
        parts = [{1: "T", 0: "N"}.get(int(row.label), "?")]
        if "prob" in tiles:
            parts.append(f"p {row.prob:.3f}")
        if isinstance(row.verdict, str):
            parts.append(VERDICT_MARKS[row.verdict])
        captions.append(" · ".join(parts))
    return captions




def model_key(run: Path) -> tuple[str, float]:
    """(run, checkpoint mtime): the cache key of anything computed with a model; stops the page
    politely when the checkpoint cannot be loaded."""
    key = (str(run), jobs.checkpoint_mtime(run))
    try:
        load_model(*key)
    except (ValueError, FileNotFoundError) as e:
        st.error(f"Cannot load the model {run.name}: {e}")
        st.stop()
    return key


def go_to_patch(index: int) -> None:
    st.session_state["inspect_index"] = int(index)


def go_to_typed_id(store: PatchStore) -> None:
    """Callback of Inspect's id box: jump to that patch, outside any filter."""
    typed = st.session_state.get("inspect_goto", "").strip()
    st.session_state["inspect_goto"] = ""
    if not typed:
        return
    try:
        st.session_state["inspect_index"] = int(store.index_of([typed])[0])
        st.session_state["inspect_order"] = None
    except ValueError as e:
        st.session_state["inspect_goto_error"] = str(e)


def save_verdict(ctx: Context, patch_id: str, verdict: str, note_key: str, prob: float | None) -> None:
    """Callback of the verdict buttons: appends the verdict at once and confirms it."""
    try:
        review_store().record(ctx.dataset_key, patch_id, verdict, ctx.reviewer,
                              note=st.session_state.get(note_key, ""),
                              checkpoint=str(ctx.run) if ctx.run else "", prob=prob)
    except ValueError as e:
        st.session_state["verdict_error"] = str(e)
        return
    st.toast(f"Saved: {verdict} on {patch_id[:12]}", icon=":material/check:")


@st.cache_data(max_entries=32)
def headline_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Threshold-free metrics: ROC AUC with its bootstrap 95% interval, PR AUC, ECE, Brier, Youden cut."""
    from pcam_core import metrics

    low, high = metrics.auc_ci(labels, probs)
    return {"roc_auc": metrics.roc_auc(labels, probs), "ci": (low, high),
            "pr_auc": metrics.pr_auc(labels, probs), "ece": metrics.ece(labels, probs),
            "brier": metrics.brier(labels, probs),
            "youden": metrics.youden_threshold(labels, probs)}


@st.cache_data(max_entries=16)
def validation_indices(run: str, _store: PatchStore, fingerprint: str) -> np.ndarray | None:
    """Store indices a run held out for validation, re-derived from its saved config (the split is
    seeded); None when the run trained on another dataset or its config is unreadable."""
    from pcam_core.config import TrainConfig
    from pcam_core.train import split_train_val

    try:
        config = TrainConfig.load(Path(run) / "config.json")
        if Path(config.data).expanduser().resolve() != _store.root.resolve():
            return None
        return split_train_val(_store, config)[1]
    except (ValueError, FileNotFoundError):
        return None
