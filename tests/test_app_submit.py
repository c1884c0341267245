"""The Submit page: predict the test part, validate, and offer the CSV."""

import io

import pandas as pd

from pcam_core.data.readers import open_dataset
from pcam_core.inference.submission import validate_submission

pytest_plugins = ["apptest"]


def test_submit_without_a_model_says_what_to_do(open_app, page_text):
    at = open_app("submit")
    assert not at.exception
    assert "No trained model yet" in page_text(at)


def test_submit_predicts_validates_and_offers_the_csv(open_app, with_model, page_text, demo_dir, downloads):
    at = open_app()
    at.selectbox(key="tta").set_value(2).run()  # the sidebar's views, used by Submit too
    at.switch_page("views/submit.py").run()
    assert at.multiselect(key="submit_models").value == ["tiny"]
    at.button(key="submit_predict").click().run()
    assert not at.exception
    assert "Valid: 60 rows" in page_text(at)
    assert not at.download_button(key="submit_download").disabled
    assert len(at.get("plotly_chart")) == 1
    preview = at.dataframe[0].value
    assert list(preview.columns) == ["id", "label"] and preview["label"].between(0, 1).all()
    expected = pd.read_csv(demo_dir / "sample_submission.csv", dtype={"id": str})
    assert preview["id"].tolist() == expected["id"].head(8).tolist()  # Kaggle's order

    # the file the user downloads, read as Kaggle would: every test id once, in order, probabilities
    csv = downloads(at.download_button(key="submit_download")).decode()
    submitted = pd.read_csv(io.StringIO(csv), dtype={"id": str})
    assert list(submitted.columns) == ["id", "label"]
    assert submitted["id"].tolist() == expected["id"].tolist()
    assert submitted["label"].between(0, 1).all() and submitted["label"].nunique() > 2  # not 0/1 labels
    assert validate_submission(submitted, open_dataset(demo_dir)) == []
