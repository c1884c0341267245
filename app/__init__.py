"""The Streamlit app, thin over pcam_core: pages read widgets, call the library, render.

- `streamlit_app.py`: the entry file, `st.navigation` over the pages.
- `views/`: one short script per page (not `pages/`, which switches Streamlit to its old mode).
- `compute/`: the work a page waits on, kept off its script: cached or background-scored predictions
  (`scoring`), long computations in a server thread with their progress (`background`).
- `widgets/`: the shared sidebar and its `Context`, the one cache layer and small widgets (`ui`), patch
  pictures (`images`), the model's view of a patch (`patch_panel`), the Slides page's caches and figure.
- `bench.py`: `python -m app.bench`, how long the pages take.

Imports point views -> compute -> widgets -> pcam_core; no page imports another.
"""
