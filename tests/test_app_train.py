"""The Train page: a tiny real job started from the form, followed to the end, listed as a run."""

import time

from pcam_core import jobs

pytest_plugins = ["apptest"]


def test_training_from_the_form_runs_to_completion(open_app, page_text, tmp_path):
    at = open_app("train")
    assert not at.exception
    assert "No runs yet" in page_text(at)
    at.selectbox(key="train_model").set_value("base_cnn")
    at.number_input(key="train_epochs").set_value(1)
    at.selectbox(key="train_batch").set_value(64)
    at.slider(key="train_val").set_value(0.2)
    at.checkbox(key="train_augment").uncheck()
    at.form_submit_button[0].click().run()
    assert not at.exception

    run = jobs.list_runs(tmp_path / "runs")["path"].iloc[0]
    assert at.session_state["train_run"] == run
    deadline = time.monotonic() + 240
    while jobs.status(run)["state"] in jobs.ACTIVE_STATES or jobs.status(run)["alive"]:
        assert time.monotonic() < deadline, jobs.log_tail(run)
        time.sleep(0.5)

    at.run()
    assert not at.exception
    text = page_text(at)
    assert ": finished" in text, jobs.log_tail(run)
    assert len(at.get("plotly_chart")) == 2  # loss and AUC curves
    runs = at.dataframe[0].value
    assert runs["state"].tolist() == ["finished"] and runs["model"].tolist() == ["base_cnn"]
    config = at.json[0].value
    assert '"val_frac": 0.2' in config and '"augment": false' in config
    assert at.sidebar.selectbox(key="model_choice").value == runs["run_id"].iloc[0]  # used from now on
