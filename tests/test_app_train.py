"""The Train page: a tiny real job started from the form, followed to the end, listed as a run."""

import json
import time

import pytest

from pcam_core import runs
from pcam_core.runs import jobs

pytest_plugins = ["apptest"]


@pytest.mark.slow
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

    run = runs.list_runs(tmp_path / "runs")["path"].iloc[0]
    assert at.session_state["train_run"] == run
    deadline = time.monotonic() + 240
    while runs.status(run)["state"] in runs.ACTIVE_STATES or runs.status(run)["alive"]:
        assert time.monotonic() < deadline, jobs.log_tail(run)
        time.sleep(0.5)

    at.run()
    assert not at.exception
    text = page_text(at)
    assert ": finished" in text, jobs.log_tail(run)
    assert len(at.get("plotly_chart")) == 2  # loss and AUC curves
    table = at.dataframe[0].value
    assert table["state"].tolist() == ["finished"] and table["model"].tolist() == ["base_cnn"]
    assert table["dataset"].tolist() == ["demo"]  # which data each run learned from
    auc_chart = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert auc_chart["layout"]["yaxis"]["range"] == [0, 1.02]  # an AUC axis, not one that runs to 2
    config = at.json[0].value
    assert '"val_frac": 0.2' in config and '"augment": false' in config
    assert at.sidebar.selectbox(key="model_choice").value == table["run_id"].iloc[0]  # used from now on

    name = table["run_id"].iloc[0]
    at.text_input(key=f"train_name_{name}").input("first-cnn").run()
    at.button(key="train_rename").click().run()
    assert not at.exception
    assert at.dataframe[0].value["run_id"].tolist() == ["first-cnn"]
    at.checkbox(key="train_delete_sure").check().run()
    at.button(key="train_delete").click().run()
    assert not at.exception
    assert "No runs yet" in page_text(at) and runs.list_runs(tmp_path / "runs").empty


def wait_until(run: str, done) -> dict:
    deadline = time.monotonic() + 240
    while not done(status := runs.status(run)):
        assert time.monotonic() < deadline, jobs.log_tail(run)
        time.sleep(0.3)
    return status


@pytest.mark.slow
def test_stop_then_resume_from_the_page_ends_with_every_epoch(open_app, page_text, tmp_path):
    at = open_app("train")
    at.selectbox(key="train_model").set_value("base_cnn")
    at.number_input(key="train_epochs").set_value(2)
    at.selectbox(key="train_batch").set_value(32)
    at.form_submit_button[0].click().run()
    run = at.session_state["train_run"]
    wait_until(run, lambda s: (s.get("step") or 0) > 0)
    at.run()
    at.button(key="train_stop").click().run()
    assert not at.exception
    stopped = wait_until(run, lambda s: not s["alive"])
    assert stopped["state"] == "stopped", jobs.log_tail(run)

    at.run()  # the page's next poll sees the job ended: Resume is offered and enabled
    assert "stopped" in page_text(at) and not at.button(key="train_resume").disabled
    at.button(key="train_resume").click().run()
    assert not at.exception
    finished = wait_until(run, lambda s: s["state"] == "finished" and not s["alive"])
    assert finished["epoch"] == 2
    assert runs.metrics(run)["epoch"].tolist() == [1, 2]


@pytest.mark.slow
def test_a_run_on_the_reviewers_labels_records_them(open_app, tmp_path, demo_dir):
    from pcam_core.data.readers import open_dataset
    from pcam_core.review.verdicts import ReviewStore

    store = open_dataset(demo_dir)
    db = ReviewStore(tmp_path / "reviews.sqlite")
    key = str(store.root.resolve())
    db.record(key, store.ids[0], "tumour" if store.labels[0] == 0 else "normal", "Ann")  # a corrected label
    db.record(key, store.ids[1], "tumour", "Ann")
    db.record(key, store.ids[1], "normal", "Ben")  # a tie: left out
    at = open_app("train")
    at.number_input(key="train_epochs").set_value(1)
    at.checkbox(key="train_reviewed").check()
    at.form_submit_button[0].click().run()
    assert not at.exception
    run = at.session_state["train_run"]
    config = json.loads((tmp_path / "runs" / run.rsplit("/", 1)[1] / "config.json").read_text())
    assert config["labels"].endswith("reviewed_labels.csv") and config["exclude_ids"].endswith("ties.csv")
    labels = (tmp_path / "runs" / run.rsplit("/", 1)[1] / "reviewed_labels.csv").read_text().splitlines()
    assert labels == ["id,label", f"{store.ids[0]},{1 - store.labels[0]}"]
    used = json.loads((tmp_path / "runs" / run.rsplit("/", 1)[1] / "reviewed_labels.json").read_text())
    assert used["verdicts"] == 3 and used["settled"] == {"agreed": 1, "conflict": 1}
    status = wait_until(run, lambda s: s["state"] not in runs.ACTIVE_STATES and not s["alive"])
    assert status["state"] == "finished", jobs.log_tail(run)


@pytest.mark.slow
def test_a_crossval_from_the_page_runs_and_feeds_browse(open_app, page_text, tmp_path):
    at = open_app("train")
    at.number_input(key="train_epochs").set_value(1)
    at.selectbox(key="train_crop").set_value(32)
    at.number_input(key="train_folds").set_value(2)
    at.form_submit_button[0].click().run()
    assert not at.exception
    folder = at.session_state["train_crossval"]
    deadline = time.monotonic() + 300
    while runs.alive(runs.read_json(tmp_path / "runs" / folder.rsplit("/", 1)[1] / "job.json").get("pid")):
        assert time.monotonic() < deadline, jobs.log_tail(folder)
        time.sleep(0.5)
    at.run()
    assert not at.exception
    text = page_text(at)
    assert "finished, 2 folds of base_cnn; out-of-fold AUC" in text, jobs.log_tail(folder)
    assert runs.list_runs(tmp_path / "runs").empty  # the fold runs are not offered as models
    at.switch_page("views/browse.py").run()
    at.toggle(key="browse_mislabelled").set_value(True).run()
    assert not at.exception and "train patches match" in page_text(at)


@pytest.mark.slow
def test_a_finished_run_is_exported_for_qupath_from_its_view(open_app, trained_runs, tmp_path, monkeypatch,
                                                              downloads):
    import io
    import shutil
    import zipfile

    shutil.copytree(trained_runs / "tiny", tmp_path / "runs" / "tiny")  # the shared run stays as it is
    at = open_app("train")
    at.button(key="train_export_wsinfer").click().run()
    assert not at.exception, at.exception
    button = next(b for b in at.get("download_button") if "WSInfer" in b.proto.label)
    with zipfile.ZipFile(io.BytesIO(downloads(button))) as archive:
        names = sorted(archive.namelist())
        config = json.loads(archive.read("tiny/config.json"))
    assert names == ["tiny/README.md", "tiny/config.json", "tiny/torchscript_model.pt"]
    assert config["class_names"] == ["Other", "Tumor"] and config["architecture"] == "base_cnn"
