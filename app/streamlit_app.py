"""PCam Review: the entry file. `streamlit run app/streamlit_app.py` (or `make run`).

It renders the shared sidebar (dataset, reviewer, model, device) on every run, then the chosen page.
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pcam_core, when run from any folder

from app.widgets import identity, sidebar, ui  # noqa: E402

st.set_page_config(page_title="PCam Review", page_icon=":material/biotech:", layout="wide")
identity.sign_in_page()  # with sign-in set up: nothing but the sign-in page until one is signed in
ui.warm_up()
page = st.navigation({
    "Data": [
        st.Page("views/data.py", title="Dataset", icon=":material/folder_open:", default=True),
        st.Page("views/eda.py", title="Explore", icon=":material/monitoring:"),
    ],
    "Review": [
        st.Page("views/browse.py", title="Browse", icon=":material/grid_view:"),
        st.Page("views/inspect.py", title="Inspect", icon=":material/center_focus_strong:"),
        st.Page("views/evaluate.py", title="Evaluate", icon=":material/query_stats:"),
        st.Page("views/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("views/slides.py", title="Slides", icon=":material/map:"),
        st.Page("views/reviewers.py", title="Reviewers", icon=":material/groups:"),
    ],
    "Model": [
        st.Page("views/train.py", title="Train", icon=":material/model_training:"),
        st.Page("views/submit.py", title="Submit", icon=":material/upload_file:"),
    ],
    "Team": [
        st.Page("views/admin.py", title="Admin", icon=":material/admin_panel_settings:"),
    ],
})
sidebar.sidebar()
page.run()
