"""What a page hands the reader as a file: folders zipped once per modification time."""

import io
import zipfile
from pathlib import Path

import streamlit as st


@st.cache_data(max_entries=4, show_spinner=False)
def zipped_folder(folder: str, mtime: float) -> bytes:
    """The files of `folder` as a zip (kept per folder and modification time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                archive.write(path, f"{Path(folder).parent.name}/{path.name}")
    return buffer.getvalue()
