"""The Inspect page: navigation, prediction and CAM, verdicts into the store, and uploaded patches."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from disks import small_disk
from PIL import Image

from app.widgets.images import read_upload
from pcam_core.data.readers import open_dataset
from pcam_core.inference import cam, infer
from pcam_core.models.registry import load
from pcam_core.review.verdicts import ReviewStore

pytest_plugins = ["apptest"]


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_the_page_shows_the_model_own_probability_and_cam(open_app, with_model, page_text, demo_dir):
    at = open_app()
    at.selectbox(key="tta").set_value(8).run()  # the sidebar's views, for every page
    at.switch_page("views/inspect.py").run()
    assert not at.exception
    assert "Patch 1 of 660" in page_text(at)
    image = open_dataset(demo_dir).batch([0])
    model = load(with_model)
    expected = infer.predict_images(model, image, tta=8, device="cpu")
    focus = cam.centre_focus(cam.compute_cams(model, image))[0]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["P(tumour)"] == f"{expected['prob'][0]:.3f}"  # the mean of the 8 views
    assert metrics["Spread"] == f"{expected['spread'][0]:.3f}"
    assert metrics["Centre focus"] == f"{focus:.0%}"
    assert len(at.image) >= 2  # the patch and its CAM overlay
    views = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert views["data"][0]["x"] == pytest.approx(expected["views"][0].tolist(), abs=1e-6)
    assert views["layout"]["xaxis"]["range"] == [0, 1]  # a fixed axis: 0.004 never looks like certainty


def test_verdicts_are_saved_at_once_with_the_model_and_its_probability(open_app, with_model, page_text,
                                                                        demo_dir, tmp_path, downloads):
    at = open_app("inspect", reviewer="Dr Ann")
    assert not at.exception

    at.slider(key="inspect_alpha").set_value(0.8).run()  # opacity: the overlay only
    assert not at.exception
    at.selectbox(key="inspect_method").set_value("gradcam++").run()
    assert not at.exception

    at.text_input(key="inspect_note_0").input("mitoses at the edge").run()
    at.button(key="inspect_verdict_normal").click().run()
    assert not at.exception
    assert "Current verdict: **normal** by Dr Ann" in page_text(at)
    assert at.text_input(key="inspect_note_0").value == ""  # the note went with that verdict only
    assert {b.proto.type for b in at.button if b.key.startswith("inspect_verdict_")} == {"secondary"}

    trail = ReviewStore(tmp_path / "reviews.sqlite").history(str(demo_dir.resolve()))
    assert len(trail) == 1
    row = trail.iloc[0]
    assert (row["verdict"], row["reviewer"], row["note"]) == ("normal", "Dr Ann", "mitoses at the edge")
    assert row["checkpoint"] == str(with_model) and 0 <= row["prob"] <= 1

    # the audit trail a reviewer downloads from Browse reads back as the same verdict
    at.switch_page("views/browse.py").run()
    exported = pd.read_csv(io.BytesIO(downloads(at.download_button(key="browse_export"))), dtype=str)
    assert exported[["patch_id", "verdict", "reviewer", "note"]].values.tolist() == [
        [row["patch_id"], "normal", "Dr Ann", "mitoses at the edge"]]


def test_previous_next_and_go_to_id(open_app, page_text, demo_dir):
    at = open_app("inspect")
    assert at.button(key="inspect_prev").disabled
    at.button(key="inspect_next").click().run()
    assert "Patch 2 of 660" in page_text(at)
    assert at.button(key="inspect_verdict_tumour").disabled  # no reviewer name yet
    assert "Enter your name" in page_text(at)

    at.text_input(key="inspect_goto").input("no-such-patch").run()
    assert not at.exception
    assert "not in" in at.error[0].value
    wanted = sorted(p.stem for p in (demo_dir / "train").iterdir())[5]
    at.text_input(key="inspect_goto").input(wanted).run()
    assert not at.exception and f"**{wanted}**" in page_text(at)


def test_an_uploaded_patch_is_scored_or_refused(open_app, with_model, page_text):
    at = open_app("inspect")
    at.file_uploader(key="inspect_upload").upload("big.png", png(120, 100), "image/png").run()
    assert not at.exception and not at.error
    assert "P(tumour)" in page_text(at)
    assert "big.png is 120x100 px: only its centre 96x96 is shown and scored" in page_text(at)
    at.file_uploader(key="inspect_upload").clear().upload("notes.png", b"not an image", "image/png").run()
    assert not at.exception
    assert "not a readable image" in at.error[0].value


@pytest.mark.parametrize("data, message", [
    (png(64, 64), "at least 96x96"),
    (b"GIF89a nonsense", "not a readable image"),
    (b"\0" * (6 * 2**20), "under 5 MB"),
])
def test_bad_uploads_are_refused_with_a_reason(data, message):
    with pytest.raises(ValueError, match=message):
        read_upload(data, "upload.png")


def test_a_larger_upload_is_centre_cropped():
    image = np.zeros((200, 300, 3), np.uint8)
    image[52:148, 102:198] = 200  # the centre 96x96
    out = io.BytesIO()
    Image.fromarray(image).save(out, "TIFF")
    upload = read_upload(out.getvalue(), "slide-crop.tif")
    assert upload.patch.shape == (96, 96, 3) and (upload.patch == 200).all()
    assert "300x200 px" in upload.note and "nothing was resized" in upload.note


def test_a_verdict_the_store_cannot_write_is_reported_and_the_note_kept(open_app, with_model, page_text,
                                                                         tmp_path, monkeypatch):
    with small_disk(tmp_path / "disk", "256k") as disk:
        db = disk / "reviews.sqlite"
        ReviewStore(db).record("other-dataset", "p", "unsure", "Someone")  # the store exists and reads
        monkeypatch.setenv("PCAM_REVIEW_DB", str(db))
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # then the disk fills up
                f.write(b"\0" * 4096)
        at = open_app("inspect", reviewer="Dr Ann")
        at.text_input(key="inspect_note_0").input("keep me").run()
        at.button(key="inspect_verdict_normal").click().run()
        assert not at.exception
        assert "The verdict was not saved" in at.error[0].value and str(db) in at.error[0].value
        assert at.text_input(key="inspect_note_0").value == "keep me"
        assert not at.button(key="inspect_verdict_normal").disabled  # the reviewer can try again


def test_browse_and_inspect_show_the_same_probability_for_a_patch(open_app, with_model, page_text):
    for tta in (1, 4):
        at = open_app()
        at.selectbox(key="tta").set_value(tta).run()
        at.switch_page("views/browse.py").run()
        assert not at.exception
        caption = at.image[0].proto.imgs[0].caption  # the first tile: "T · p 0.931"
        browse_p = float(caption.split(" · ")[1][2:])
        at.button(key="browse_inspect_0").click().run()
        assert not at.exception
        metrics = {m.label: m.value for m in at.metric}
        assert float(metrics["P(tumour)"]) == pytest.approx(browse_p, abs=1.5e-3), (tta, caption, metrics)
        # the number, the spread and the chart say the same: tta views counted, the rest drawn grey
        assert f"P and spread over the {tta} view" in page_text(at)
        chart = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
        colours = chart["marker"]["color"]
        counted = [x for x, colour in zip(chart["x"], colours, strict=True) if colour == "#3F6FA0"]
        assert len(counted) == tta
        assert float(metrics["P(tumour)"]) == pytest.approx(np.mean(counted), abs=1.5e-3)
        if tta == 1:
            assert metrics["Spread"] == "n/a"
        else:
            assert float(metrics["Spread"]) == pytest.approx(np.std(counted), abs=1.5e-3)


def test_a_verdict_can_move_on_to_the_next_patch_and_the_count_follows(open_app, with_model, page_text):
    at = open_app("inspect", reviewer="Dr Ann")
    assert "Patch 1 of 660 in the current filter · reviewed 0 of 660" in page_text(at)
    at.toggle(key="inspect_advance").set_value(True).run()
    at.button(key="inspect_verdict_tumour").click().run()
    assert not at.exception
    assert "Patch 2 of 660 in the current filter · reviewed 1 of 660" in page_text(at)
    at.button(key="inspect_prev").click().run()
    assert "Current verdict: **tumour** by Dr Ann" in page_text(at)
    assert "the label" in page_text(at)  # agreement with the given label is derived and shown


def test_markdown_in_a_reviewer_name_is_shown_as_text(open_app, page_text):
    hostile = "[x](http://example.invalid) ![](http://example.invalid/i.png) :red[Dr]"
    at = open_app("inspect", reviewer=hostile)
    at.button(key="inspect_verdict_tumour").click().run()
    assert not at.exception
    shown = next(m.value for m in at.markdown if m.value.startswith("Current verdict"))
    # escaped: the markdown the page sends renders the characters, not a link, an image or a colour
    assert "[x](http" not in shown and "![](" not in shown and ":red[" not in shown
    assert r"\[x\]\(http\://example\.invalid\)" in shown
