"""PCam Review as an ASGI app: the pages (`streamlit_app.py`) and the app's own routes on one port.

`streamlit run app/server.py` (what `make run` does) serves the pages and, on the same origin, the slide
viewer's tiles, maps and bundle (`app.compute.tiles.ROUTES`). `streamlit run app/streamlit_app.py` still
serves the pages alone, without the viewer's routes.
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app and pcam_core, when run from any folder

from app.compute.tiles import ROUTES  # noqa: E402
from app.widgets.identity import refusal  # noqa: E402

if reason := refusal(st.config.get_option("server.address")):
    sys.exit(f"error: {reason}")
app = st.App(str(Path(__file__).with_name("streamlit_app.py")), routes=ROUTES)
