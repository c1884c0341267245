"""The Dataset page and the sidebar's dataset picker."""

import pytest

pytest_plugins = ["apptest"]


def test_dataset_page_shows_the_demo_counts(open_app, page_text):
    at = open_app()
    assert not at.exception
    assert at.title[0].value == "Dataset"
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Patches"], metrics["Layout"], metrics["Bad files skipped"]) == ("660", "kaggle", "0")
    assert "Every file was read" in page_text(at)
    assert at.sidebar.radio(key="dataset_source").value == "Built-in demo"
    assert at.sidebar.caption[0].value.startswith("Device: ")


def test_rebuilding_the_cache_reports_the_count(open_app, page_text):
    at = open_app()
    at.button(key="data_pack").click().run()
    assert not at.exception
    assert "Packed 660 patches" in page_text(at)


def test_a_typed_folder_is_validated(open_app, page_text, demo_dir, tmp_path):
    at = open_app()
    at.sidebar.radio(key="dataset_source").set_value("Folder path").run()
    assert "Type a dataset folder" in page_text(at)

    at.sidebar.text_input(key="dataset_folder").input(str(tmp_path / "nowhere")).run()
    assert not at.exception
    assert "No dataset folder at" in at.error[0].value

    (tmp_path / "empty").mkdir()
    at.sidebar.text_input(key="dataset_folder").input(str(tmp_path / "empty")).run()
    assert not at.exception
    assert "is empty" in at.error[0].value

    at.sidebar.text_input(key="dataset_folder").input(str(demo_dir)).run()
    assert not at.exception and not at.error
    assert "layout: kaggle" in at.sidebar.code[0].value
    assert {m.label: m.value for m in at.metric}["Patches"] == "660"


@pytest.mark.sample
def test_the_real_sample_is_offered_when_present(open_app, sample_dir, monkeypatch):
    monkeypatch.setenv("PCAM_SAMPLE_DIR", str(sample_dir))
    at = open_app()
    at.sidebar.radio(key="dataset_source").set_value("Kaggle sample").run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Patches"].replace(",", "")) > 6000 and metrics["Layout"] == "kaggle"


def test_the_start_up_folder_is_named_when_it_is_not_the_demo(open_app, monkeypatch, demo_dir, tmp_path):
    own = tmp_path / "my-kaggle-download"  # `make run DATA=...`: the user's folder, no demo tumour masks
    own.mkdir()
    for name in ("train", "test", "train_labels.csv", "sample_submission.csv"):
        (own / name).symlink_to(demo_dir / name)
    monkeypatch.setenv("PCAM_DATA", str(own))
    at = open_app()
    assert not at.exception
    assert at.sidebar.radio(key="dataset_source").value == "Started with: my-kaggle-download"
    assert {m.label: m.value for m in at.metric}["Patches"] == "660"
