"""The Explore page: charts from the stats table, blank patches, sample grids."""

pytest_plugins = ["apptest"]


def test_explore_page_draws_every_section(open_app, page_text):
    at = open_app("eda")
    assert not at.exception
    assert [s.value for s in at.subheader] == ["Class balance", "Distribution by class", "Stain colour",
                                              "Blank and background patches", "Samples by class"]
    assert len(at.get("plotly_chart")) == 3
    text = page_text(at)
    assert "**Tumour**" in text and "**Normal**" in text and "**Unlabelled**" in text
    assert len(at.image) >= 24  # three class grids of 8 (and blank patches when any)


def test_explore_controls_rerun_without_errors(open_app, page_text):
    at = open_app("eda")
    at.segmented_control(key="eda_split").set_value("train").run()
    assert not at.exception
    assert "**Unlabelled**" not in page_text(at)
    at.selectbox(key="eda_stat").set_value("saturation").run()
    assert not at.exception
    before = [i.value for i in at.image]
    at.button(key="eda_shuffle").click().run()
    assert not at.exception
    assert [i.value for i in at.image] != before
