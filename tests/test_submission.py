"""Submission writer and validator on a tiny Kaggle folder: order, coverage, and every defect caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pcam_core.data.readers import open_dataset
from pcam_core.inference.submission import (
    build_submission,
    expected_ids,
    validate_submission,
    write_submission,
)

TEST_IDS = [f"t{i:02d}" for i in range(6)]
KAGGLE_ORDER = ["t03", "t00", "t05", "t01", "t04", "t02"]


def _write_patches(folder, ids):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for pid in ids:
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / f"{pid}.tif")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    _write_patches(root / "train", ["a", "b"])
    pd.DataFrame({"id": ["a", "b"], "label": [0, 1]}).to_csv(root / "train_labels.csv", index=False)
    _write_patches(root / "test", TEST_IDS)
    pd.DataFrame({"id": KAGGLE_ORDER, "label": 0}).to_csv(root / "sample_submission.csv", index=False)
    return open_dataset(root)


@pytest.fixture
def predictions():
    return pd.DataFrame({"id": TEST_IDS, "prob": np.linspace(0.1, 0.9, len(TEST_IDS))})


def test_writer_follows_kaggle_order_and_is_valid(store, predictions, tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    write_submission(predictions, store, out)
    written = pd.read_csv(out, dtype={"id": str})
    assert list(written.columns) == ["id", "label"]
    assert written["id"].tolist() == KAGGLE_ORDER
    by_id = dict(zip(predictions["id"], predictions["prob"], strict=True))
    assert written["label"].tolist() == pytest.approx([by_id[i] for i in KAGGLE_ORDER])
    assert validate_submission(out, store) == []
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temp file left behind


def test_writer_refuses_missing_predictions(store, predictions):
    with pytest.raises(ValueError, match="1 test id\\(s\\) have no prediction: t05"):
        build_submission(predictions[predictions["id"] != "t05"], store)


def test_writer_refuses_hard_labels_unless_asked(store, predictions, tmp_path):
    hard = predictions.assign(prob=(predictions["prob"] > 0.5).astype(float))
    with pytest.raises(ValueError, match="every label is 0 or 1"):
        write_submission(hard, store, tmp_path / "s.csv")
    write_submission(hard, store, tmp_path / "s.csv", allow_hard_labels=True)


def test_writer_reports_an_unwritable_path(store, predictions, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot write the submission"):
        write_submission(predictions, store, blocker / "submission.csv")


def test_expected_ids_fall_back_to_the_test_split(tmp_path):
    _write_patches(tmp_path / "test", ["z", "y"])
    assert sorted(expected_ids(open_dataset(tmp_path))) == ["y", "z"]


def test_no_test_part(tmp_path):
    _write_patches(tmp_path / "train", ["a"])
    pd.DataFrame({"id": ["a"], "label": [1]}).to_csv(tmp_path / "train_labels.csv", index=False)
    with pytest.raises(ValueError, match="no test part"):
        expected_ids(open_dataset(tmp_path))


def _csv(tmp_path, rows: list[str], header: str = "id,label"):
    path = tmp_path / "candidate.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


GOOD = [f"{pid},0.{i + 1}" for i, pid in enumerate(KAGGLE_ORDER)]


@pytest.mark.parametrize("rows, header, expected", [
    (GOOD, "id,label", []),
    (GOOD[:-1], "id,label", ["1 test id(s) missing: t02"]),
    (GOOD + ["zz,0.5"], "id,label", ["1 id(s) not in the test set: zz"]),
    (GOOD + [GOOD[0]], "id,label", ["1 duplicate id(s): t03"]),
    (GOOD[:-1] + ["t02,abc"], "id,label", ["1 non-numeric label(s), e.g. 'abc' for id t02"]),
    (GOOD[:-1] + ["t02,"], "id,label", ["1 empty label(s), e.g. id t02"]),
    (GOOD[:-1] + ["t02,1.5"], "id,label", ["1 label(s) outside [0, 1], e.g. 1.5 for id t02"]),
    (GOOD[:-1] + ["t02,-0.1"], "id,label", ["1 label(s) outside [0, 1], e.g. -0.1 for id t02"]),
    (GOOD, "id,prob", ["columns are ['id', 'prob']; Kaggle needs exactly id,label"]),
])
def test_validator_names_each_defect(store, tmp_path, rows, header, expected):
    assert validate_submission(_csv(tmp_path, rows, header), store) == expected


def test_validator_refuses_hard_labels_unless_asked(store, tmp_path):
    path = _csv(tmp_path, [f"{pid},{i % 2}" for i, pid in enumerate(KAGGLE_ORDER)])
    [problem] = validate_submission(path, store)
    assert problem.startswith("every label is 0 or 1")
    assert validate_submission(path, store, allow_hard_labels=True) == []


def test_validator_reports_unreadable_files(store, tmp_path):
    absent = tmp_path / "absent.csv"
    assert validate_submission(absent, store) == [f"{absent} does not exist"]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    [problem] = validate_submission(empty, store)
    assert "not a readable CSV" in problem
