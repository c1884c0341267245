"""Which folders a visitor of the app may reach, and where the app may write.

A path typed into a page (a dataset folder, a slide folder, an export target) is resolved, symbolic links
and `..` included, and must lie inside one of the data roots: `PCAM_DATA_ROOTS` (folders separated by
`os.pathsep`) plus the folders the app offers itself (the built-in demo, PCAM_SAMPLE_DIR, PCAM_SLIDES_DIR).
Exports go inside the output folder (`PCAM_OUTPUT_DIR`, else models/exports); a relative target is taken
inside it. In local mode without PCAM_DATA_ROOTS (no sign-in: the person at the machine owns it) a typed
path may be anywhere, as before; with sign-in set up, or PCAM_DATA_ROOTS set, the roots hold.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.widgets.identity import auth_configured

REPO = Path(__file__).resolve().parents[2]


def data_roots() -> list[Path] | None:
    """The folders a typed path must lie in; None: anywhere (local mode, no PCAM_DATA_ROOTS)."""
    configured = [Path(p).expanduser() for p in os.environ.get("PCAM_DATA_ROOTS", "").split(os.pathsep) if p]
    if not configured and not auth_configured():
        return None
    offered = [os.environ.get("PCAM_DATA") or REPO / "data", os.environ.get("PCAM_SAMPLE_DIR"),
               os.environ.get("PCAM_SLIDES_DIR")]
    return [Path(p).resolve() for p in [*configured, *offered] if p]


def output_root() -> Path:
    return Path(os.environ.get("PCAM_OUTPUT_DIR") or REPO / "models" / "exports").expanduser().resolve()


def readable(typed: str) -> Path:
    """The folder a visitor typed, when the app may read it; ValueError with one line when not."""
    path = Path(typed.strip()).expanduser().resolve()
    roots = data_roots()
    if roots is not None and not any(path.is_relative_to(root) for root in roots):
        raise ValueError(f"{typed.strip()} is outside the folders this app offers "
                         f"({', '.join(str(r) for r in roots)}): an admin adds folders with PCAM_DATA_ROOTS")
    return path


def writable(typed: str) -> Path:
    """Where an export a visitor typed may go (a relative target inside the output folder); ValueError with
    one line when it would leave the output folder while the roots hold."""
    out = output_root()
    path = (out / Path(typed.strip()).expanduser()).resolve()  # an absolute target replaces `out`
    if data_roots() is not None and not path.is_relative_to(out):
        raise ValueError(f"{typed.strip()} is outside the output folder {out}: exports go inside it (a "
                         "relative name is taken there; PCAM_OUTPUT_DIR chooses the folder)")
    return path
