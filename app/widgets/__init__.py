"""What every page is built from: the sidebar's `Context`, the st.cache_* wrappers (the app's one cache
layer, in `ui`), patch pictures, the patch panel shared by Inspect and Slides, and the Slides page's
caches and map figure. Nothing here imports a page or `app.compute`."""
