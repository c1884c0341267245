"""The sidebar's choices survive a reload: they live in the page's URL (query parameters).

Streamlit binds the dataset, reviewer and TTA widgets to the URL itself (checked in Chromium, in
test_e2e_browser.py); the model a user picks is put there by the sidebar, checked here."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from app.widgets.sidebar import NO_MODEL

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"

pytest_plugins = ["apptest"]


def test_a_picked_model_is_in_the_url_and_comes_back_after_a_reload(open_app, with_model):
    at = open_app()
    assert at.selectbox(key="model_choice").value == "tiny" and "model" not in at.query_params
    at.selectbox(key="model_choice").set_value(NO_MODEL).run()  # the user's own choice: no model
    assert not at.exception
    assert at.query_params["model"] in (NO_MODEL, [NO_MODEL])

    reloaded = AppTest.from_file(str(ENTRY), default_timeout=120)  # a new session on the same URL
    reloaded.query_params["model"] = NO_MODEL
    reloaded.run()
    assert not reloaded.exception
    assert reloaded.selectbox(key="model_choice").value == NO_MODEL  # not the default "tiny"


def test_the_model_menu_puts_the_auc_before_the_name_and_says_the_rest_below(open_app, with_model):
    at = open_app()
    box = at.sidebar.selectbox(key="model_choice")
    shown = box.format_func(box.value)
    assert shown.startswith("AUC 0.") and shown.endswith("· tiny")  # a long name is cut, not the AUC
    details = " ".join(c.value for c in at.sidebar.caption)
    assert "tiny: base_cnn, 2 of 2 epochs on demo, best validation AUC " + shown[4:9] in details


def test_a_run_that_finishes_later_does_not_replace_the_model_in_use(open_app, trained_runs, tmp_path,
                                                                       monkeypatch):
    import os
    import shutil

    runs = tmp_path / "shared-runs"
    shutil.copytree(trained_runs / "tiny", runs / "tiny")
    monkeypatch.setenv("PCAM_RUNS_DIR", str(runs))
    at = open_app()
    assert at.selectbox(key="model_choice").value == "tiny"
    shutil.copytree(trained_runs / "tiny", runs / "newer")  # a colleague's run finishes meanwhile
    later = (runs / "tiny").stat().st_mtime + 3600  # a run from the command line is dated by its folder
    os.utime(runs / "newer", (later, later))
    at.run()
    assert not at.exception
    assert at.selectbox(key="model_choice").value == "tiny"  # the one in use stays
    assert any("newer, has finished" in c.value for c in at.sidebar.caption)
