"""A visitor reaches only what the app offers: typed folders inside the data roots (links and `..`
resolved first), exports inside the output folder; local mode without roots is as before."""

from __future__ import annotations

import os

import pytest

from app.widgets import roots

pytest_plugins = ["apptest"]


@pytest.fixture
def rooted(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "slides").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    monkeypatch.setenv("PCAM_DATA_ROOTS", str(root))
    monkeypatch.setenv("PCAM_OUTPUT_DIR", str(tmp_path / "out"))
    return root


def test_typed_folders_must_lie_in_a_root(rooted, tmp_path):
    assert roots.readable(str(rooted / "slides")) == (rooted / "slides").resolve()
    for typed in ("/etc", str(rooted / ".." / ".."), str(rooted / "escape"), f"{rooted}/slides/../../"):
        with pytest.raises(ValueError, match="outside the folders this app offers"):
            roots.readable(typed)


def test_exports_stay_in_the_output_folder(rooted, tmp_path):
    assert roots.writable("cells-1") == (tmp_path / "out" / "cells-1").resolve()
    for typed in ("../elsewhere", "/tmp/x", str(tmp_path / "root")):
        with pytest.raises(ValueError, match="outside the output folder"):
            roots.writable(typed)


def test_local_mode_without_roots_reads_and_writes_where_told(tmp_path, monkeypatch):
    monkeypatch.delenv("PCAM_DATA_ROOTS", raising=False)
    assert roots.data_roots() is None
    assert roots.readable(str(tmp_path)) == tmp_path.resolve()
    assert roots.writable(str(tmp_path / "x")) == (tmp_path / "x").resolve()


def test_the_sidebar_refuses_a_dataset_folder_outside_the_roots(open_app, rooted, demo_dir, monkeypatch):
    os.symlink(demo_dir, rooted / "demo-copy")
    at = open_app()
    at.radio(key="dataset_source").set_value("Folder path").run()
    at.text_input(key="dataset_folder").input("/etc").run()
    assert [e.value for e in at.error if "outside the folders this app offers" in e.value]
    at.text_input(key="dataset_folder").input(str(rooted / "demo-copy")).run()
    assert not at.error and not at.exception
