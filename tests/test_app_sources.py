"""The app on the other dataset layouts (PCam HDF5, a folder of images) and with a broken model chosen."""

import json

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from pcam_core.data.readers import open_dataset

pytest_plugins = ["apptest"]


def test_the_app_opens_a_pcam_hdf5_folder(open_app, page_text, monkeypatch, demo_dir, tmp_path):
    demo = open_dataset(demo_dir)
    folder = tmp_path / "pcam"
    folder.mkdir()
    for split, rows in (("train", range(0, 40)), ("valid", range(40, 50)), ("test", range(600, 610))):
        rows = np.asarray(rows)
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=demo.batch(rows))
        if split != "test":
            with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
                f.create_dataset("y", data=demo.labels[rows].reshape(-1, 1, 1, 1).astype(np.uint8))
    monkeypatch.setenv("PCAM_DATA", str(folder))
    at = open_app()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Patches"], metrics["Layout"]) == ("60", "pcam")
    assert "read directly" in page_text(at)  # nothing to pack
    at.switch_page("views/browse.py").run()
    assert not at.exception
    assert at.selectbox(key="browse_split").options == ["train", "valid", "test"]
    assert "**40** of 40 train patches match" in page_text(at)


def test_the_app_opens_a_folder_of_images_with_a_labels_csv(open_app, page_text, monkeypatch, demo_dir,
                                                            tmp_path):
    demo = open_dataset(demo_dir)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(demo[i]).save(folder / f"case{i:02d}.png")
    pd.DataFrame({"id": [f"case{i:02d}" for i in range(8)], "label": demo.labels[:8]}).to_csv(
        folder / "labels.csv", index=False)
    monkeypatch.setenv("PCAM_DATA", str(folder))
    at = open_app()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Patches"], metrics["Layout"]) == ("12", "folder")
    at.switch_page("views/inspect.py").run()
    assert not at.exception
    assert "**case00**" in page_text(at)


def test_a_broken_checkpoint_is_not_the_default_and_chosen_gets_one_message(open_app, tmp_path):
    run = tmp_path / "runs" / "broken-run"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "finished", "epoch": 1, "best_auc": 0.9}))
    (run / "best.pt").write_bytes(b"this is not a checkpoint")
    at = open_app()
    assert at.sidebar.selectbox(key="model_choice").value == "(no model)"  # not chosen for the reviewer
    at.sidebar.selectbox(key="model_choice").set_value("broken-run").run()
    for page in ("inspect", "browse", "evaluate"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, page
        assert at.error and "not a readable PCam Review checkpoint" in at.error[0].value, page
    at.sidebar.selectbox(key="model_choice").set_value("(no model)").run()
    assert not at.exception and not at.error  # the reviewer can carry on without it


def test_a_model_of_another_dataset_is_marked_not_the_default_and_warned_about(open_app, with_model,
                                                                             monkeypatch, demo_dir, tmp_path):
    own = tmp_path / "my-kaggle-download"  # the same patches in another folder: another dataset to the app
    own.mkdir()
    for name in ("train", "test", "train_labels.csv", "sample_submission.csv"):
        (own / name).symlink_to(demo_dir / name)
    monkeypatch.setenv("PCAM_DATA", str(own))
    at = open_app()
    box = at.sidebar.selectbox(key="model_choice")
    assert box.value == "(no model)"  # the demo-trained model is offered, never chosen for the reviewer
    assert any(o.startswith("(demo) AUC") and o.endswith("· tiny") for o in box.options), box.options
    box.set_value("tiny").run()
    for page in ("browse", "inspect", "evaluate"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception
        assert "was trained on demo, not on this dataset" in at.warning[0].value, page

    monkeypatch.setenv("PCAM_DATA", str(demo_dir))  # on its own dataset: the default, and no warning
    at = open_app("browse")
    assert at.sidebar.selectbox(key="model_choice").value == "tiny"
    assert not any("not on this dataset" in w.value for w in at.warning)
