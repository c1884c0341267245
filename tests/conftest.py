"""Shared fixtures: a small demo dataset made once per session, and the real sample when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Pack caches go to a per-session folder, never beside the user's data or in ~/.cache."""
    monkeypatch.setenv("PCAM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """600 train + 60 test synthetic patches in the Kaggle layout (read-only: copy before changing)."""
    from pcam_core.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo(out, n_train=600, n_test=60, seed=1)
    return out


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real Kaggle sample (../shared/data/pcam-sample); skips when PCAM_SAMPLE_DIR is unset."""
    path = os.environ.get("PCAM_SAMPLE_DIR")
    if not path:
        pytest.skip("PCAM_SAMPLE_DIR is unset (real Kaggle sample not available)")
    if not Path(path, "train_labels.csv").is_file():
        pytest.fail(f"PCAM_SAMPLE_DIR={path} has no train_labels.csv")
    return Path(path)
