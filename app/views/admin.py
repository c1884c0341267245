"""Admin: the people who signed in and their roles, deactivation, and the audit trail (read and download).

Only an admin opens it; in local mode (no sign-in set up) the one person at this machine is its admin.
"""

from pathlib import Path

import pandas as pd
import streamlit as st

from app.widgets import identity, reviews, sidebar, slides, ui
from pcam_core.review import users
from pcam_core.review.agreement import reviewer_key

ui.header("Admin", "Who may do what, and what was done: the people who signed in, their roles (admin, "
                   "reviewer, viewer), and the audit trail of exports, jobs, imports and changes.")
ctx = sidebar.context()
if not ctx.user.may("administer"):
    st.error(f"Only an admin opens this page; you are signed in as a {ctx.user.role}. Ask an admin to "
             "change your role.")
    st.stop()

store = reviews.review_store()
if st.session_state.get("admin_done"):
    st.success(st.session_state.pop("admin_done"))
st.subheader("People")
if not identity.auth_configured():
    st.info("Local mode: sign-in is not set up, so the person at this machine is the admin and verdicts "
            "carry typed names (unverified). README 'Team deployment' sets up sign-in, users and roles.")
else:
    people = users.everyone(store)
    st.dataframe(pd.DataFrame([{"name": m.name, "e-mail": m.email, "role": m.role, "active": m.active,
                                "id": m.id} for m in people]), hide_index=True, key="admin_people")
    with st.form("admin_change", border=True):
        row = st.columns([3, 2, 1, 1], vertical_alignment="bottom")
        who = row[0].selectbox("Person", people, format_func=lambda m: m.label,
                               key="admin_person")
        role = row[1].selectbox("Role", users.ROLES, key="admin_role",
                                help="admin: everything; reviewer: verdicts, notes, tags, regions; viewer: "
                                     "looks only.")
        active = row[2].checkbox("Active", value=True, key="admin_active",
                                 help="A deactivated person is refused on every page at once, whatever "
                                      "their sign-in cookie says.")
        if row[3].form_submit_button("Save the change", type="primary") and who is not None:
            try:
                changed = users.change(store, ctx.user.member, who.id, role=role, active=active)
            except (ValueError, PermissionError) as e:
                st.error(str(e))
            else:
                state = "active" if changed.active else "deactivated"
                st.session_state["admin_done"] = f"{changed.name}: {changed.role}, {state}."
                st.rerun()  # the table above shows the change

if identity.auth_configured():
    st.subheader("Typed names")
    every = store.every_verdict()
    typed = sorted(set(every.loc[~every["verified"], "reviewer"]))
    if not typed:
        st.caption("No verdicts under typed (unverified) names.")
    else:
        mapped = users.mapped_names(store)
        st.caption("Verdicts given in local mode carry the name that was typed, unverified. Say who each "
                   "name was: the pages then count those verdicts as that person's (rows stay as written). "
                   + ", ".join(f"{ui.as_text(n)} -> {ui.as_text(mapped[reviewer_key(n)])}" for n in typed
                               if reviewer_key(n) in mapped))
        with st.form("admin_names", border=True):
            row = st.columns([2, 3, 1], vertical_alignment="bottom")
            name = row[0].selectbox("Typed name", typed, key="admin_typed")
            person = row[1].selectbox("Was", users.everyone(store), key="admin_was",
                                      format_func=lambda m: m.label)
            if row[2].form_submit_button("Map the name") and person is not None:
                try:
                    users.map_name(store, ctx.user.member, name, person.id)
                except (ValueError, PermissionError) as e:
                    st.error(str(e))
                else:
                    st.session_state["admin_done"] = f"{name}'s verdicts now count as {person.name}'s."
                    st.rerun()

st.subheader("Blind review")
offered = [f"slide:{Path(p).resolve()}" for folder in slides.slide_folders().values()
           for p in slides.slides_in(str(folder))]
targets = list(dict.fromkeys([ctx.dataset_key, *reviews.slides_reviewed(), *offered]))
with st.form("admin_blind", border=True):
    row = st.columns([3, 1, 1.2, 1.3, 1.6], vertical_alignment="bottom")
    target = row[0].selectbox("Dataset or slide", targets, key="admin_blind_target",
                              format_func=lambda d: f"slide {Path(d[6:]).name}" if d.startswith("slide:")
                              else f"dataset {Path(d).name}")
    now = store.blind_mode(target)
    row[0].caption("Now: " + ("blind" + (", label hidden" if now["hide_label"] else "")
                              + (", model hidden" if now["hide_model"] else "") if now["active"] else "open"))
    on = row[1].checkbox("Blind", value=now["active"], key="admin_blind_on",
                         help="Reviewers see no one else's verdicts on a patch or cell until they have "
                              "answered it.")
    hide_label = row[2].checkbox("Hide label", value=now["hide_label"], key="admin_blind_label")
    hide_model = row[3].checkbox("Hide model", value=now["hide_model"], key="admin_blind_model",
                                 help="The model's P, views and CAM until one has answered; on a slide, its "
                                      "map and hot spots altogether (a blind read).")
    if row[4].form_submit_button("Save blind mode"):
        store.set_blind(target, on, hide_label, hide_model, ctx.user.name or "(no name given)", ctx.user.id)
        st.session_state["admin_done"] = f"Blind review {'on' if on else 'off'} for {target}."
        st.rerun()

st.subheader("Audit trail")
trail = store.events().iloc[::-1]
st.caption(f"{len(trail):,} events, newest first. The command line reads the same: "
           "`python -m pcam_core review audit --out events.csv`.")
st.dataframe(trail, hide_index=True, key="admin_trail")
st.download_button("Download the audit trail (CSV)", trail.iloc[::-1].to_csv(index=False), "audit.csv",
                   "text/csv", key="admin_download", icon=":material/download:")
