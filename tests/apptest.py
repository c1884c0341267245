"""Helpers for the page tests (tests/test_app_*.py): the app opened on a demo set, and a trained run.

A test module uses the fixtures by naming this module in `pytest_plugins`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "app" / "streamlit_app.py"


@pytest.fixture(scope="session")
def trained_runs(demo_dir, tmp_path_factory) -> Path:
    """A runs folder holding one finished base_cnn run (2 epochs) on the demo set."""
    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "PCAM_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache")}
    # packed first, as the app has always opened (packed) a dataset before it starts a job on it
    subprocess.run([sys.executable, "-m", "pcam_core", "pack", "--data", str(demo_dir)], cwd=REPO, env=env,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pcam_core", "train", "--data", str(demo_dir), "--model",
                    "base_cnn", "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--out",
                    str(runs / "tiny")], cwd=REPO, env=env, check=True, capture_output=True)
    return runs


@pytest.fixture
def open_app(demo_dir, tmp_path, monkeypatch):
    """`open_page`, in the app's test environment: the demo set as the built-in dataset, no runs
    ($PCAM_RUNS_DIR: tmp_path/runs) and a fresh verdict store ($PCAM_REVIEW_DB)."""
    monkeypatch.setenv("PCAM_DATA", str(demo_dir))
    monkeypatch.setenv("PCAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PCAM_REVIEW_DB", str(tmp_path / "reviews.sqlite"))
    monkeypatch.delenv("PCAM_SAMPLE_DIR", raising=False)
    return open_page


@pytest.fixture
def with_model(trained_runs, monkeypatch) -> Path:
    """Points the app at the runs folder with the trained demo model; returns that run folder."""
    monkeypatch.setenv("PCAM_RUNS_DIR", str(trained_runs))
    return trained_runs / "tiny"


@pytest.fixture
def scored():
    return until_scored


@pytest.fixture
def scoring_of():
    return scoring_text


@pytest.fixture
def page_text():
    return text_of


def open_page(page: str | None = None, reviewer: str = "") -> AppTest:
    """Runs the app, then switches to app/views/<page>.py (the entry file draws the sidebar first)."""
    at = AppTest.from_file(str(ENTRY), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    if reviewer:
        at.text_input(key="reviewer").input(reviewer).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    return at


def scoring_text(at: AppTest) -> str:
    """The text of a "Scoring all ..." progress bar on the page (a split scored in the background)."""
    return " ".join(bar.proto.text for bar in at.get("progress") if bar.proto.text.startswith("Scoring all"))


def until_scored(at: AppTest, timeout: float = 120) -> AppTest:
    """Reruns the page until no split is being scored in the background, as the page's own timer would."""
    deadline = time.monotonic() + timeout
    at.run()
    while scoring_text(at):
        assert time.monotonic() < deadline, f"still scoring after {timeout} s: {scoring_text(at)}"
        time.sleep(0.2)
        at.run()
    assert not at.exception, at.exception
    return at


def text_of(at: AppTest) -> str:
    """Every title, header, markdown, caption, metric and alert on the page, as one string."""
    kinds = ("title", "subheader", "markdown", "caption", "info", "warning", "success", "error")
    parts = [e.value for kind in kinds for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def downloads(monkeypatch):
    """The bytes behind a download button, as the browser would receive them: `downloads(button)`.

    AppTest serves media from an in-memory store it builds per run; this keeps a handle on each one.
    """
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    stores: list[MemoryMediaFileStorage] = []

    class Kept(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Kept)

    def read(button) -> bytes:
        name = button.proto.url.rsplit("/", 1)[-1]
        for store in reversed(stores):
            try:
                return bytes(store.get_file(name).content)
            except Exception:  # noqa: BLE001 - not in this run's store: look in the earlier ones
                continue
        raise AssertionError(f"no media file behind {button.proto.url!r}")

    return read
