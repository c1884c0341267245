"""Blind review on the Inspect page: until a reviewer has answered a patch they see no one else's verdict
(and, as the admin chose, neither the given label nor the model); their verdict is marked blind; then
everything shows. The Reviewers page can count the blind verdicts alone."""

from __future__ import annotations

import re

from pcam_core.review.store import ReviewStore

pytest_plugins = ["apptest"]


def shown_patch(at) -> str:
    return next(re.match(r"\*\*(\w+)\*\*", m.value).group(1) for m in at.markdown
                if re.match(r"\*\*\w+\*\* · split", m.value))


def test_a_blind_reviewer_sees_no_one_elses_verdict_until_answering(open_app, with_model, page_text, demo_dir,
                                                                    tmp_path):
    at = open_app("inspect", reviewer="Dr Bob")
    patch = shown_patch(at)
    key = str(demo_dir.resolve())
    store = ReviewStore(tmp_path / "reviews.sqlite")
    store.record(key, patch, "tumour", "Dr Ann", note="crowded nuclei")
    store.set_blind(key, True, hide_label=True, hide_model=True, by="Dr Admin")
    at.run()
    text = page_text(at)
    assert "Blind review on this dataset" in text and "Dr Ann" not in text and "crowded" not in text
    assert "label **hidden until you answer**" in " ".join(m.value for m in at.markdown)
    assert "The model's view of this patch shows once you have answered" in text
    assert not [m for m in at.metric if m.label == "P(tumour)"]  # no P
    at.button(key="inspect_verdict_normal").click().run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Dr Ann" in text or "Dr Bob" in text  # answered: the history shows
    assert any(m.label == "P(tumour)" for m in at.metric)  # and the model
    rows = store.history(key, patch)
    assert rows["reviewer"].tolist() == ["Dr Ann", "Dr Bob"]
    assert store.blind_verdicts(key) == {int(rows["seq"].iloc[1])}  # Bob's, given blind

    at.switch_page("views/reviewers.py").run()
    assert not at.exception, at.exception
    at.toggle(key="reviewers_blind").set_value(True).run()
    assert "1 reviewer so far" in page_text(at).replace("One reviewer so far", "1 reviewer so far")


def test_an_admin_assigns_a_filter_and_the_reviewer_finds_it_under_assigned_to_me(open_app, page_text,
                                                                                   demo_dir, tmp_path):
    from pcam_core.review import assignments

    at = open_app("browse", reviewer="Dr Admin")  # local mode: the person at the machine is the admin
    at.selectbox(key="browse_label").select("tumour").run()
    expander = next(e for e in at.expander if e.label.startswith("Assign these"))
    count = int(expander.label.split()[2].replace(",", ""))
    at.text_input(key="browse_assign_person").input("Dr Bob")  # in the form: sent with its button
    next(b for b in at.button if b.label == f"Assign these {count:,} patches").click().run()
    assert not at.exception, at.exception
    key = str(demo_dir.resolve())
    store = ReviewStore(tmp_path / "reviews.sqlite")
    given = assignments.assigned(store, key, assignments.assignee_of("", "dr bob"))
    assert len(given) == count and store.events("assignment")["actor"].tolist() == ["Dr Admin"]

    bob = open_app("browse", reviewer="Dr Bob")
    bob.toggle(key="browse_assigned").set_value(True).run()
    assert f"**{count:,}** of" in page_text(bob)  # exactly the patches given
    assert not [t for t in open_app("browse", reviewer="Dr Carol").toggle if t.key == "browse_assigned"]


def test_a_blind_read_of_a_slide_shows_the_slide_without_its_map(open_app, with_model, page_text, tmp_path):
    import json

    from pcam_core.slides.demo import make_demo_slide

    make_demo_slide(tmp_path / "slides" / "blind.tif", 768, 512, seed=4)
    at = open_app("slides", reviewer="Dr Bob")
    at.selectbox(key="slides_source").set_value("A folder I type").run()
    at.text_input(key="slides_folder").input(str(tmp_path / "slides")).run()
    at.button(key="slides_score").click().run()
    key = f"slide:{(tmp_path / 'slides' / 'blind.tif').resolve()}"
    store = ReviewStore(tmp_path / "reviews.sqlite")
    store.set_blind(key, True, hide_label=False, hide_model=True, by="Admin")
    at.run()
    assert not at.exception, at.exception
    assert "Blind review on this slide" in page_text(at)
    viewer = next(e for e in at.get("bidi_component") if e.proto.component_name.endswith("slide_viewer"))
    data = json.loads(viewer.proto.json)
    assert data["dzi"].startswith("/tiles/") and data["map"] is None and data["hotspots"] == []
