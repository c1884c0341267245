"""Dataset: what was loaded, how it splits, what was skipped, and the pack cache."""

import numpy as np
import pandas as pd
import streamlit as st

from app.compute import background
from app.widgets import sidebar, ui
from pcam_core.data import splits
from pcam_core.inference.duplicates import NEAR_PSNR

ui.header("Dataset", "The patches the other pages work on. Pick another dataset in the sidebar: the built-in "
                     "demo, the real Kaggle sample, or any folder (Kaggle layout, PCam HDF5 or images).")
ctx = sidebar.context()
store = ctx.store

cols = st.columns(4)
cols[0].metric("Patches", f"{len(store):,}")
cols[1].metric("Layout", store.layout)
cols[2].metric("Tumour", f"{int((store.labels == 1).sum()):,}")
cols[3].metric("Bad files skipped", f"{len(store.skipped):,}")

st.subheader("Splits and labels")
counts = (pd.crosstab(pd.Series(store.splits, name="split"),
                      pd.Series(store.labels, name="label").map(ui.label_name))
          .reindex(store.split_names()))
counts["total"] = counts.sum(axis=1)
st.dataframe(counts, key="data_counts")
st.caption("Label 1 (tumour) means at least one tumour pixel lies in the centre 32x32 of the patch; "
           "the outer ring is context only.")

st.subheader("Slides (groups)")
meta = splits.pcam_meta_files(store.root)
if meta:
    slides = ui.slide_groups(str(store.root), store.fingerprint)
    st.markdown(f"**{slides:,} slides** in PCam's meta files: training draws its validation patches and "
                "crossval its folds by slide, so no slide is on both sides.")
else:
    st.caption("Which slide each patch comes from is not known for this dataset, so a drawn validation split "
               "puts patches of one slide on both sides and its AUC is optimistic (Kaggle write-ups: about "
               "0.99 on validation against 0.97 on the leaderboard). Give `train --groups FILE` (id, group) "
               "where you know the slides.")

st.subheader("Duplicates")


pairs = ui.duplicate_pairs(store)
key = ("duplicates", store.fingerprint)
if pairs is None:
    st.caption("Not looked for yet: exact copies (also flipped or turned) and near copies (re-compressed or "
               "slightly altered) within a split and between training and test. About 10 s per 6,000 "
               "patches here. `python -m pcam_core duplicates` runs the same search from the command line "
               "(with `--checkpoint`, also among a model's nearest embeddings; this page shows the "
               "search without a model, at the default threshold).")
    if st.button("Find duplicates", key="data_duplicates") or background.running(key):
        from pcam_core.inference import duplicates

        job = background.job_for(key, lambda progress: duplicates.duplicates(
            store, progress=lambda done, total: progress("scan", done, total)))
        if job.running or job.error:
            ui.job_progress(job, lambda _, done, total: (
                f"Reading the patches: {done:,} of {total:,}, then comparing. You can leave this page: the "
                "search goes on and its result is kept on disk."), "The duplicate search failed")
        else:
            pairs = job.result
if pairs is not None and pairs.empty:
    st.success(f"No two tissue patches are the same: no exact copies, also flipped or turned, and no near "
               f"copies (pixels agreeing to {NEAR_PSNR} dB). Blank glass is in the exact search only: "
               "any two blank tiles look alike.")
elif pairs is not None:
    from pcam_core.inference import duplicates

    st.warning(f"{len(pairs):,} pairs of copies in {pairs['group'].nunique():,} groups. A validation patch "
               "with a copy in training makes the held-out AUC optimistic: Evaluate and Train say when.")
    st.dataframe(duplicates.summary(pairs), hide_index=True, key="data_duplicate_counts")
    for _, members in list(pairs.groupby("group"))[:6]:  # side by side, the first six groups
        patches = np.unique(np.concatenate([members["a"], members["b"]]))
        kinds = ", ".join(sorted(set(members["kind"])))
        st.markdown(f"**{len(patches):,} patches** ({kinds})")
        ui.patch_grid(store, patches[:8], [f"{store.splits[i]} · {store.ids[i][:8]}" for i in patches[:8]])

st.subheader("Skipped files")
if store.skipped.empty:
    st.success("Every file was read: no corrupt, mis-sized or unlabelled patches.")
else:
    st.warning(f"{len(store.skipped):,} files were left out. They are listed below; fix or remove them "
               "and rebuild the cache.")
    st.dataframe(store.skipped, hide_index=True, key="data_skipped")

st.subheader("Cache")
st.markdown(f"The app only reads `{store.root}`; its decoded patches live in `{store.cache_dir}` "
            f"(fingerprint `{store.fingerprint[:12]}`).")
if store.layout == "pcam":
    st.caption("PCam HDF5 files are read directly: nothing to pack.")
elif st.button("Rebuild the cache", key="data_pack", help="Decode every file again (after adding or fixing "
                                                           "files)."):
    try:
        summary = sidebar.pack_with_progress(store.root, force=True)
    except ValueError as e:
        st.error(f"Packing failed: {e}")
        st.stop()
    ui.forget_store()
    st.success(summary.capitalize())
