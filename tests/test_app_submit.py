"""The Submit page: predict the test part, validate, and offer the CSV."""

import pandas as pd

pytest_plugins = ["apptest"]


def test_submit_without_a_model_says_what_to_do(open_app, page_text):
    at = open_app("submit")
    assert not at.exception
    assert "No trained model yet" in page_text(at)


def test_submit_predicts_validates_and_offers_the_csv(open_app, with_model, page_text, demo_dir):
    at = open_app("submit")
    assert at.multiselect(key="submit_models").value == ["tiny"]
    at.selectbox(key="submit_tta").set_value(2).run()
    at.button(key="submit_predict").click().run()
    assert not at.exception
    assert "Valid: 60 rows" in page_text(at)
    assert not at.download_button(key="submit_download").disabled
    assert len(at.get("plotly_chart")) == 1
    preview = at.dataframe[0].value
    assert list(preview.columns) == ["id", "label"] and preview["label"].between(0, 1).all()
    expected = pd.read_csv(demo_dir / "sample_submission.csv", dtype={"id": str})
    assert preview["id"].tolist() == expected["id"].head(8).tolist()  # Kaggle's order
