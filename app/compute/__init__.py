"""The work a page waits on, off the page's script: predictions read from the cache or scored with a
progress bar (`scoring`), and long computations in a server thread that a reader may leave and come back
to (`background`). It uses `app.widgets`' cache layer, never a page."""
