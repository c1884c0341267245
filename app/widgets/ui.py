"""The app's one cache layer and its small shared widgets (pcam_core never imports Streamlit).

`st.cache_resource` for open datasets and loaded models, `st.cache_data` for tables and maps, each keyed
by what makes it current (a folder's mtime, a checkpoint's mtime, a data fingerprint). The sidebar and
its `Context` are in `sidebar.py`; page callbacks live in their page.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st

from app.widgets.images import with_centre_box
from pcam_core import data, runs
from pcam_core.data.readers import PatchStore

if TYPE_CHECKING:  # for the annotations only: importing models here would import torch at app start
    from pcam_core.inference import cam
    from pcam_core.models.registry import Classifier

REPO = Path(__file__).resolve().parents[2]
# A cached model is shared by every session (threads of one server): while Grad-CAM's hooks sit on it,
# another session's forward pass would feed them, so model passes take turns.
MODEL_IN_USE = threading.Lock()


# ---- cached resources ----------------------------------------------------------------------------

@st.cache_resource(show_spinner="Opening the dataset")
def open_dataset(path: str, mtime: float) -> PatchStore:
    """An open dataset, kept per folder and its modification time (`sidebar.open_store` packs first)."""
    return data.open_dataset(path)


@st.cache_resource
def warm_up() -> threading.Thread:
    """Imports torch and the CAM library in a thread, once per server, while the first page renders: the
    first Inspect would otherwise wait several seconds for them (pytorch-grad-cam pulls in torchvision
    and scikit-learn)."""
    def imports() -> None:
        try:
            import pcam_core.inference.cam  # noqa: F401
            import pcam_core.inference.infer  # noqa: F401
        except Exception:  # noqa: BLE001 - only a head start: the page's own import reports a real failure
            pass  # (and a server shutting down mid-import ends here)

    thread = threading.Thread(target=imports, daemon=True, name="warm-up")
    thread.start()
    return thread


@st.cache_resource
def device_label() -> str:
    """The device jobs and predictions run on: the GPU's name, or the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)"


def device_spec() -> str:
    return "cuda" if device_label().startswith("GPU") else "cpu"


def forget_store() -> None:
    """Drops the open datasets, after their cache was rebuilt."""
    open_dataset.clear()


@st.cache_data(max_entries=16)
def holdout(run: str, mtime: float, _store: PatchStore, fingerprint: str) -> np.ndarray | None:
    """Store indices the run held out for validation (its val_ids.csv); None when it trained on other data."""
    from pcam_core.data.splits import holdout_indices

    try:
        return holdout_indices([run], _store)
    except (ValueError, FileNotFoundError):
        return None


def duplicate_pairs(store: PatchStore) -> pd.DataFrame | None:
    """The dataset's duplicate pairs when they were looked for (Dataset page, `duplicates`); else None."""
    from pcam_core.inference import duplicates

    return duplicates.cached_duplicates(store)


def warn_if_leaking(store: PatchStore, held_out: np.ndarray | None) -> None:
    """Says so when held-out patches have a copy among the training patches: their AUC is optimistic."""
    from pcam_core.inference import duplicates

    pairs = duplicate_pairs(store)
    if pairs is None or pairs.empty or held_out is None:
        return
    held = set(store.ids[held_out])
    training = set(store.ids[store.split_indices("train")]) - held
    leaked = duplicates.leaks(pairs, held, training)
    if len(leaked):
        patches = len(set(leaked["a_id"]) & held | set(leaked["b_id"]) & held)
        st.warning(f"{patches:,} held-out patch(es) have an exact or near copy among the patches this run "
                   f"trained on ({len(leaked):,} pairs, Dataset page): the held-out AUC is optimistic. "
                   "Train again with `--exclude-ids` for one side of each pair, or group them.")


@st.cache_data(max_entries=8)
def slide_groups(root: str, fingerprint: str) -> int:
    """How many slides PCam's meta files name for the dataset at `root`."""
    from pcam_core.data.splits import PCAM_META, read_groups

    store = open_dataset(root, Path(root).stat().st_mtime)
    groups = read_groups(store, PCAM_META)
    return len(set(groups[groups != ""]))


def label_check(dataset_key: str) -> pd.DataFrame | None:
    """The newest finished crossval of this dataset's label issues (`crossval.label_issues`: id, label,
    prob (out-of-fold), quality, issue, rank, plus `folds` and `model`), or None when there is none."""
    from pcam_core.training import crossval

    found = crossval.list_crossvals(runs.runs_dir())
    found = found[found["data"] == dataset_key]
    if found.empty:
        return None
    newest = found.iloc[0]
    return _label_issues(newest["path"], float(newest["mtime"])).assign(folds=newest["folds"],
                                                                       model=newest["model"])


@st.cache_data(max_entries=4, show_spinner="Ranking the labels (cleanlab)")
def _label_issues(path: str, mtime: float) -> pd.DataFrame:
    from pcam_core.training import crossval

    return crossval.read_label_issues(path)


@st.cache_data(max_entries=16)
def run_config(run: str, mtime: float) -> dict:
    """The run's config.json as a dict ({} when unreadable)."""
    return runs.read_json(Path(run) / "config.json")


@st.cache_resource(max_entries=8)
def load_model(run: str, mtime: float) -> Classifier:
    """The run's Classifier on the app's device, kept while its checkpoint file is unchanged."""
    from pcam_core.models.registry import load, resolve_device

    return load(run, device=resolve_device("auto"))


@st.cache_data(max_entries=256)
def tta_views(run: str, mtime: float, image: np.ndarray) -> np.ndarray:
    """The tumour probability of one (96, 96, 3) patch under each of the 8 dihedral views."""
    from pcam_core.inference import infer

    with MODEL_IN_USE:
        return infer.predict_images(load_model(run, mtime), image[None], tta=8)["views"][0]


@st.cache_data(max_entries=256)
def cam_map(run: str, mtime: float, image: np.ndarray, method: str, layer: str | None,
            target: str) -> np.ndarray:
    """The (96, 96) CAM of one patch in [0, 1]."""
    from pcam_core.inference import cam

    with MODEL_IN_USE:
        return cam.compute_cams(load_model(run, mtime), image[None], method=method, layer=layer,
                                target=target)[0]


@st.cache_data(max_entries=16)
def cam_layers(run: str, mtime: float) -> tuple[list[cam.CamLayer], str]:
    """The layers a CAM can be taken from, shallowest first (`cam.cam_layers`), and the default's name."""
    from pcam_core.inference import cam

    classifier = load_model(run, mtime)
    with MODEL_IN_USE:
        return (cam.cam_layers(classifier.module, classifier.crop),
                cam.default_layer(classifier.module, classifier.crop))


@st.cache_resource(max_entries=2, show_spinner=False)
def _embeddings(_store: PatchStore, fingerprint: str, split: str, checkpoint: str | None, mtime: float):
    from pcam_core.inference import embed

    return embed.embeddings(_store, split, checkpoint)


def similar_patches(store: PatchStore, fingerprint: str, split: str, checkpoint: str | None, mtime: float,
                    index: int, k: int = 12) -> np.ndarray:
    """Store indices of the `k` patches of the split nearest to `index` in the map's embedding."""
    from pcam_core.inference import embed

    emb = _embeddings(store, fingerprint, split, checkpoint, mtime)
    row = int(np.flatnonzero(emb.index == index)[0])
    return emb.index[embed.neighbours(emb.features, row, k, standardise=emb.statistics)]


def model_key(run: Path) -> tuple[str, float]:
    """(run, checkpoint mtime): the cache key of anything computed with a model; stops the page
    politely when the checkpoint cannot be loaded."""
    key = (str(run), runs.checkpoint_mtime(run))
    try:
        load_model(*key)
    except (ValueError, FileNotFoundError) as e:
        st.error(f"Cannot load the model {run.name}: {e}")
        st.stop()
    return key


@st.fragment(run_every=1.0)
def job_progress(job, describe: Callable[[str, int, int], str], failed: str) -> None:
    """While a background job works: a progress bar with `describe(stage, done, total)`, and a rerun of the
    page when the job keeps a first result to show (`job.partial`); then a rerun of the page (or `failed`
    and the job's error, when it failed)."""
    if job.running:
        st.progress(job.done / job.total if job.total else 0.0, text=describe(job.stage, job.done, job.total))
        if job.partial is not None and st.session_state.get("job_partial_shown") != id(job.partial):
            st.session_state["job_partial_shown"] = id(job.partial)
            st.rerun(scope="app")
    elif job.error:
        st.error(f"{failed}: {job.error}")
    else:
        st.rerun()


# ---- small shared widgets ------------------------------------------------------------------------

MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$])")


def as_text(value) -> str:
    """What a user typed (a reviewer's name, a note, a tag), escaped so that Streamlit's markdown shows it
    as typed: a link, an image, a colour or an icon in it stays text."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", str(value))


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
    switch_page("views/inspect.py")


def switch_page(page: str) -> None:
    """The one way a page sends the reader to another, keeping the URL's state.

    st.switch_page replaces the URL's query parameters, and Streamlit refuses to clear the ones bound to
    the sidebar's widgets (the reviewer, the dataset): hand it the one the sidebar sets itself; the bound
    ones follow their widgets.
    """
    kept = {"model": st.query_params["model"]} if "model" in st.query_params else {}
    st.switch_page(page, query_params=kept)


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

VERDICT_MARKS = {"tumour": "reviewed: tumour", "normal": "reviewed: normal", "unsure": "reviewed: unsure"}


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




@st.cache_data(max_entries=32)
def headline_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Threshold-free metrics: ROC AUC with its bootstrap 95% interval, PR AUC, ECE, Brier, Youden cut."""
    from pcam_core.inference import metrics

    low, high = metrics.auc_ci(labels, probs)
    return {"roc_auc": metrics.roc_auc(labels, probs), "ci": (low, high),
            "pr_auc": metrics.pr_auc(labels, probs), "ece": metrics.ece(labels, probs),
            "brier": metrics.brier(labels, probs),
            "youden": metrics.youden_threshold(labels, probs)}
