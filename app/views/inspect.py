"""Inspect: one patch large, the model's prediction per TTA view, Grad-CAM, and the reviewer's verdict."""


import numpy as np
import pandas as pd
import streamlit as st

from app.widgets import images, patch_panel, reviews, sidebar, ui
from pcam_core.data.readers import PatchStore
from pcam_core.review.verdicts import ANSWERS, VERDICTS

SCALE = patch_panel.SCALE

ui.header("Inspect", "A patch at 4x with its centre 32x32 outlined, what the model says under each flip and "
                     "rotation, where it looks (CAM), and your verdict on whether tumour lies in the centre.")
ctx = sidebar.context()
sidebar.warn_if_other_data(ctx)
store = ctx.store


def go_to_patch(index: int) -> None:
    st.session_state["inspect_index"] = int(index)


def go_to_typed_id(store: PatchStore) -> None:
    """Callback of the id box: jump to that patch, outside any filter."""
    typed = st.session_state.get("inspect_goto", "").strip()
    st.session_state["inspect_goto"] = ""
    if not typed:
        return
    try:
        st.session_state["inspect_index"] = int(store.index_of([typed])[0])
        st.session_state["inspect_order"] = None
    except ValueError as e:
        st.session_state["inspect_goto_error"] = str(e)


def save_verdict(patch_id: str, verdict: str, note_key: str, prob: float | None, next_index: int | None
                 ) -> None:
    """Callback of the verdict buttons: appends the verdict at once and confirms it."""
    try:
        reviews.review_store().record(ctx.dataset_key, patch_id, verdict, ctx.reviewer,
                                 note=st.session_state.get(note_key, ""),
                                 checkpoint=str(ctx.run) if ctx.run else "", prob=prob,
                                 reviewer_id=ctx.user.id, verified=ctx.user.verified,
                                 blind=reviews.blind_mode(ctx.dataset_key)["active"])
    except (ValueError, OSError) as e:  # a read-only or full verdict store, no reviewer name
        # the note stays in its box and the buttons stay: nothing the reviewer typed is lost
        st.session_state["verdict_error"] = (f"The verdict was not saved: {e}. The verdict store is "
                                             f"{reviews.review_db()}: free disk space there, or point "
                                             f"PCAM_REVIEW_DB at a writable file.")
        return
    st.session_state[note_key] = ""  # saved with this verdict: it must not ride along with the next one
    st.toast(f"Saved: {verdict} on {patch_id[:12]}", icon=":material/check:")
    if st.session_state.get("inspect_advance") and next_index is not None:
        go_to_patch(next_index)


def label_check(patch_id: str, label: int) -> None:
    """What the cross-validated models and cleanlab make of this patch's label, when a crossval exists."""
    issues = ui.label_check(ctx.dataset_key)
    if issues is None:
        return
    found = issues[issues["id"] == patch_id]
    if found.empty:
        return
    row = found.iloc[0]
    text = (f"Label check ({row['folds']}-fold crossval of {row['model']}, cleanlab): given label "
            f"{ui.label_name(label)} · out-of-fold P(tumour) {row['prob']:.3f} · label quality "
            f"{row['quality']:.3f} · rank {row['rank']:,} of {len(issues):,} (1 is the least trustworthy)")
    if row["issue"]:
        st.warning(f"Likely mislabelled. {text}", icon=":material/flag:")
    else:
        st.caption(text, help="Label quality: the out-of-fold probability of the given label, from a model "
                              "that never trained on this patch. Confident learning flags a label when the "
                              "models of the other folds confidently say the other class.")


if "inspect_index" not in st.session_state and st.query_params.get("patch"):  # a reload or a bookmark
    try:
        go_to_patch(int(store.index_of([st.query_params["patch"]])[0]))
    except ValueError:
        st.warning(f"Patch {ui.as_text(st.query_params['patch'])} of the link is not in this dataset.")

dataset_tab, upload_tab = st.tabs(["Dataset patch", "Your own patch"])
with dataset_tab:
    order = st.session_state.get("inspect_order")
    if order is None or not len(order):
        order = np.arange(len(store))
    index = int(st.session_state.get("inspect_index", order[0]))
    if not 0 <= index < len(store):
        index = int(order[0])
    st.query_params["patch"] = store.ids[index]  # the open patch is in the URL
    position = np.flatnonzero(order == index)
    at = int(position[0]) if len(position) else 0
    nav = st.columns([1, 1, 3, 2])
    following = int(order[at + 1]) if at + 1 < len(order) else None
    nav[0].button("Previous", key="inspect_prev", disabled=at == 0, icon=":material/arrow_back:",
                  on_click=go_to_patch, args=(int(order[max(at - 1, 0)]),), shortcut="Left")
    nav[1].button("Next", key="inspect_next", disabled=following is None, icon=":material/arrow_forward:",
                  on_click=go_to_patch, args=(following,), shortcut="Right")
    done = reviews.seen_verdicts(ctx.dataset_key, ctx.reviewer)["patch_id"].to_numpy()
    reviewed = int(pd.Index(store.ids[order]).isin(done).sum())  # hashed: quick at 220,025 patches
    nav[2].markdown(f"Patch {at + 1:,} of {len(order):,} in the current filter · reviewed {reviewed:,} of "
                    f"{len(order):,}")
    nav[3].text_input("Go to id", key="inspect_goto", placeholder="go to patch id",
                      on_change=go_to_typed_id, args=(store,), label_visibility="collapsed")
    if st.session_state.get("inspect_goto_error"):
        st.error(st.session_state.pop("inspect_goto_error"))

    patch_id, label = str(store.ids[index]), int(store.labels[index])
    rgb = store[index]
    history, hidden = reviews.seen_history(ctx.dataset_key, patch_id, ctx.reviewer)
    mode = reviews.blind_mode(ctx.dataset_key)
    hide_label, hide_model = hidden and mode["hide_label"], hidden and mode["hide_model"]
    shown_label = "hidden until you answer" if hide_label else ui.label_name(label)
    st.markdown(f"**{patch_id}** · split {store.splits[index]} · label **{shown_label}**")
    if mode["active"]:
        st.info("Blind review on this dataset: other reviewers' verdicts"
                + (", the given label" if mode["hide_label"] else "")
                + (", the model's P and views" if mode["hide_model"] else "")
                + " show once you have answered this patch.")
    if not hide_label:
        label_check(patch_id, label)
    original, heat, controls = st.columns([4, 4, 3])
    with original:
        st.image(images.with_centre_box(rgb, SCALE), width="stretch", output_format="PNG",
                 caption="original, centre 32x32 outlined")
        mask = store.masks([index])
        if mask is not None and mask[0].any():
            st.image(images.with_centre_box(np.where(mask[0][..., None], rgb, rgb // 3), 2),
                     caption="tumour pixels (demo ground truth)")
    if hide_model:
        heat.caption("The model's view of this patch shows once you have answered (blind review).")
        prob = None
    else:
        prob = patch_panel.model_panel(ctx.run, rgb, "inspect", heat, controls, ctx.tta)

    st.subheader("Tumour in the centre 32x32?")
    st.caption("Your answer about the tissue; whether it matches the label and the model is worked out, "
               "not asked.")
    if len(history):
        last = history.iloc[-1]
        st.markdown(f"Current verdict: **{last['verdict']}** by {ui.as_text(last['reviewer'])} "
                    f"({last['created'][:16]})"
                    + patch_panel.agreement(last["verdict"], label, prob))
    if not ctx.reviewer:
        st.warning("Enter your name as Reviewer in the sidebar to record verdicts.")
    elif not ctx.user.may("review"):
        st.info(f"You are a {ctx.user.role}: you look, you do not answer. An admin can make you a reviewer.")
    if st.session_state.get("verdict_error"):
        st.error(st.session_state.pop("verdict_error"))
    note = st.text_input("Note (optional)", key=f"inspect_note_{index}")
    buttons = st.columns(len(VERDICTS) + 3)
    for col, verdict in zip(buttons, VERDICTS, strict=False):
        col.button(ANSWERS[verdict], key=f"inspect_verdict_{verdict}",
                   disabled=not ctx.reviewer or not ctx.user.may("review"),
                   type="secondary", width="stretch",  # no answer is styled as the expected one
                   shortcut=ANSWERS[verdict][0],  # Y, N, U
                   on_click=save_verdict, args=(patch_id, verdict, f"inspect_note_{index}", prob, following))
    buttons[-1].toggle("Then next", key="inspect_advance", persist_state="session",
                       help="After a verdict, go on to the next patch in the filter. Keys: Y, N, U answer; "
                            "Left and Right arrows move.")
    if len(history):
        with st.expander(f"History of this patch ({len(history)} verdicts)"):
            st.dataframe(history[["created", "reviewer", "verdict", "note", "checkpoint", "prob"]],
                         hide_index=True, key="inspect_history")

with upload_tab:
    st.caption("A .tif, .png or .jpg of a single patch. Larger images are centre-cropped to 96x96; "
               "nothing you upload is stored.")
    upload = st.file_uploader("Patch image", type=["tif", "tiff", "png", "jpg", "jpeg"], key="inspect_upload")
    if upload is not None:
        try:
            uploaded = images.read_upload(upload.getvalue(), upload.name)
        except ValueError as e:
            st.error(str(e))
        else:
            if uploaded.note:
                st.info(uploaded.note)
            own = uploaded.patch
            original, heat, controls = st.columns([4, 4, 3])
            original.image(images.with_centre_box(own, SCALE), width="stretch", output_format="PNG",
                           caption=upload.name)
            patch_panel.model_panel(ctx.run, own, "upload", heat, controls, ctx.tta)
