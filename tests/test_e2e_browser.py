"""End to end in headless Chromium: every page of the running app loads without an error element, and a
reviewer goes Browse -> Inspect -> Agree and the verdict lands in the store. Screenshots go to tmp_path."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pcam_core.review import regions
from pcam_core.review.verdicts import ReviewStore
from pcam_core.slides.cache import load_map
from pcam_core.slides.demo import make_demo_slide
from pcam_core.slides.export import parse_cell_id
from pcam_core.slides.regions import hot_spots

pytest_plugins = ["apptest"]
pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {"dataset": "", "explore": "eda", "browse": "browse", "inspect": "inspect", "evaluate": "evaluate",
         "map": "map", "slides": "slides", "reviewers": "reviewers", "train": "train", "submit": "submit",
         "admin": "admin"}
REPO = Path(__file__).resolve().parents[1]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(demo_dir, trained_runs, tmp_path):
    """The app served on a free localhost port, on the demo set, with the trained demo model."""
    yield from serve(demo_dir, trained_runs, tmp_path)


@pytest.fixture
def slides_server(demo_dir, trained_runs, tmp_path):
    """The same, with a folder holding a synthetic slide as the example slides."""
    make_demo_slide(tmp_path / "slides" / "demo.tif", 1536, 1024, seed=3)
    yield from serve(demo_dir, trained_runs, tmp_path, PCAM_SLIDES_DIR=str(tmp_path / "slides"))


def serve(demo_dir: Path, runs: Path, tmp_path: Path, **extra: str):
    port = free_port()
    env = {**os.environ, "PCAM_DATA": str(demo_dir), "PCAM_RUNS_DIR": str(runs),
           "PCAM_REVIEW_DB": str(tmp_path / "reviews.sqlite"), **extra}
    env.pop("PCAM_SAMPLE_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/server.py",
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def settle(page, timeout: float = 180) -> None:
    """Waits until the app has drawn a title and stopped running for a moment (up to 3 minutes: a fresh
    server on a loaded 2-core CI machine once took over 90 s to its first title)."""
    page.wait_for_selector("h1", timeout=timeout * 1000)
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 4 and time.monotonic() < deadline:
        quiet = quiet + 1 if not page.locator("[data-testid=stStatusWidget]").count() else 0
        time.sleep(0.25)


def errors_on(page) -> int:
    return page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count()


def test_every_page_loads_and_a_verdict_reaches_the_store(server, demo_dir, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        for name, path in PAGES.items():
            page.goto(f"{server}/{path}")
            settle(page)
            page.screenshot(path=shots / f"{name}.png")
            assert errors_on(page) == 0, f"error element on the {name} page (see {shots / name}.png)"

        page.goto(server)
        settle(page)
        page.get_by_label("Reviewer", exact=True).fill("Dr E2E")
        page.get_by_label("Reviewer", exact=True).press("Enter")
        settle(page)
        page.get_by_role("link", name="Browse").click()
        settle(page)
        # a reviewer's place survives a reload: Browse's filter and page, then the patch open in Inspect
        page.goto(page.url.replace("/browse?", "/browse?browse_label=tumour&"))
        settle(page)
        page.get_by_label("Page", exact=True).fill("2")
        page.get_by_label("Page", exact=True).press("Enter")
        settle(page)
        assert "browse_page=2" in page.url and "browse_label=tumour" in page.url
        page.reload()
        settle(page)
        assert page.get_by_label("Page", exact=True).input_value() == "2"
        assert page.get_by_text(re.compile(r"tumour.*page 2 of|page 2 of")).count() >= 1
        page.get_by_role("button", name="Inspect").first.click()
        page.get_by_role("heading", name="Inspect").wait_for()
        settle(page)
        opened = re.search(r"[?&]patch=([^&]+)", page.url).group(1)
        page.reload()
        settle(page)
        assert f"patch={opened}" in page.url and page.get_by_text(opened).count() >= 1
        page.get_by_role("heading", name="Inspect").first.click()  # focus on the page, not on a text box
        page.keyboard.press("y")  # the shortcut of "Yes"
        settle(page)
        page.screenshot(path=shots / "verdict.png")
        assert errors_on(page) == 0
        page.reload()  # the sidebar's choices live in the URL: the name comes back
        settle(page)
        assert "reviewer=" in page.url
        assert page.get_by_label("Reviewer", exact=True).input_value() == "Dr E2E"
        browser.close()

    store = ReviewStore(tmp_path / "reviews.sqlite")
    deadline = time.monotonic() + 10
    while store.history(str(demo_dir.resolve())).empty and time.monotonic() < deadline:
        time.sleep(0.2)
    trail = store.history(str(demo_dir.resolve()))
    assert trail[["verdict", "reviewer"]].values.tolist() == [["tumour", "Dr E2E"]]
    print(f"screenshots in {shots}")


def viewer_state(page, expression: str):
    """Evaluates `expression` on the slide viewer's state (`s`) in the page."""
    return page.evaluate(f"() => {{ const s = document.querySelector('.pcam-viewer').viewerState; "
                         f"return {expression}; }}")


def cell_on_screen(page, row: int, col: int) -> tuple[float, float]:
    """The page coordinates of the centre of map cell (row, col) in the viewer as it is drawn now."""
    return tuple(viewer_state(page, f"""(() => {{ const t = s.transform(), r = s.view.getBoundingClientRect();
        return [r.left + t.x + ({col} + 0.5) * s.data.cell * t.scale,
                r.top + t.y + ({row} + 0.5) * s.data.cell * t.scale]; }})()"""))


def test_a_slide_is_viewed_a_hot_spot_opened_a_verdict_and_a_region_kept(slides_server, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 2400})
        sent = []  # what the page sends the server: a rerun is a message on the websocket
        page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(frame)))
        page.goto(f"{slides_server}/slides")
        settle(page)
        page.get_by_label("Reviewer", exact=True).fill("Dr Slide")
        page.get_by_label("Reviewer", exact=True).press("Enter")
        settle(page)
        page.get_by_role("button", name="Score this slide").click()
        page.wait_for_selector(".pcv-view[data-loaded=yes]", timeout=120_000)
        settle(page)
        page.screenshot(path=shots / "slide-viewer.png")
        slide_path = (tmp_path / "slides" / "demo.tif").resolve()  # other tests' maps share the cache
        meta = next(m for m in Path(os.environ["PCAM_CACHE_DIR"]).rglob("meta.json")
                    if Path(json.loads(m.read_text()).get("slide", "")).resolve() == slide_path)
        slide_map = load_map(meta.parent)
        spot = hot_spots(slide_map.prob, slide_map.grid, 0.972, 0.5)[0]

        # the first hot spot, then 1:1: its peak cell is on screen at one screen pixel per slide pixel
        page.locator(".pcv-hot li").first.click()
        page.get_by_role("button", name="1:1", exact=True).click()
        page.wait_for_function("() => Math.abs(document.querySelector('.pcv-view').dataset.magnification"
                               " - 10 / 0.972) < 0.05", timeout=20_000)
        page.wait_for_selector(".pcv-view[data-loaded=yes]", timeout=60_000)
        assert viewer_state(page, f"s.inView([{spot.row}, {spot.col}])")
        page.screenshot(path=shots / "slide-viewer-1to1.png")

        # opacity and the map on/off are the browser's own: no message to the server, no rerun
        page.locator(".pcv-view").focus()
        before = len(sent)
        page.keyboard.press("]")
        page.keyboard.press("h")
        time.sleep(1.5)
        view = page.locator(".pcv-view")
        assert view.get_attribute("data-opacity") == "0.65" and view.get_attribute("data-map") == "off"
        assert len(sent) == before, "a pure view change sent the server a message"
        page.keyboard.press("h")

        # a click on the cell opens its patch panel
        page.mouse.click(*cell_on_screen(page, spot.row, spot.col))
        page.get_by_role("heading", name=f"Cell r{spot.row} c{spot.col}").wait_for(timeout=60_000)
        settle(page)
        assert page.get_by_text("CAM over the patch").count() == 1  # the patch's Grad-CAM is drawn
        page.get_by_role("button", name="Yes", exact=True).click()
        settle(page)
        marks = viewer_state(page, "s.data.marks")
        assert [spot.row, spot.col, "tumour"] in marks  # the verdict shows on the slide

        # a region drawn in the view: three corners, Enter
        page.get_by_role("button", name="Draw not tumour").click()
        box = page.locator(".pcv-view").bounding_box()  # corners in the top left, clear of the controls
        for dx, dy in ((120, 120), (320, 120), (320, 260)):
            page.mouse.click(box["x"] + dx, box["y"] + dy)
        page.keyboard.press("Enter")
        try:
            page.get_by_text("Drawn regions (1)").wait_for(timeout=60_000)
        except Exception:
            page.screenshot(path=shots / "region-not-kept.png")
            raise
        settle(page)
        page.screenshot(path=shots / "slide-region.png")
        assert errors_on(page) == 0
        page.reload()  # the slide, the open cell, the view and the region come back
        settle(page)
        page.get_by_role("heading", name=f"Cell r{spot.row} c{spot.col}").wait_for(timeout=60_000)
        page.wait_for_selector(".pcv-view[data-loaded=yes]", timeout=60_000)
        assert viewer_state(page, "s.data.regions.length") == 1
        assert viewer_state(page, f"s.inView([{spot.row}, {spot.col}])")
        assert errors_on(page) == 0
        browser.close()

    key = f"slide:{slide_path}"
    store = ReviewStore(tmp_path / "reviews.sqlite")
    rows = store.latest(key)
    assert rows[["verdict", "reviewer"]].values.tolist() == [["tumour", "Dr Slide"]]
    assert parse_cell_id(rows["patch_id"].iloc[0]) == slide_map.grid.window_box(spot.row, spot.col)
    drawn = regions.current(store, key)
    assert [(r.kind, r.reviewer, len(r.points)) for r in drawn] == [("normal", "Dr Slide", 3)]
    print(f"screenshots in {shots}")


def test_two_reviewers_disagree_and_the_patch_joins_the_conflict_queue(server, demo_dir, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1800})
        for reviewer, key in (("Dr Ann", "y"), ("Dr Ben", "n")):  # the same first patch, opposite answers
            page.goto(f"{server}/inspect")
            settle(page)
            page.get_by_label("Reviewer", exact=True).fill(reviewer)
            page.get_by_label("Reviewer", exact=True).press("Enter")
            settle(page)
            page.get_by_role("heading", name="Inspect").first.click()  # focus off the text box
            page.keyboard.press(key)
            settle(page)
        page.get_by_role("link", name="Reviewers").click()
        settle(page)
        page.screenshot(path=shots / "reviewers.png", full_page=True)
        assert errors_on(page) == 0
        assert page.get_by_role("heading", name="Disagreements (1)").count() == 1
        page.get_by_role("button", name="Review the 1 disagreements in Inspect").click()
        page.get_by_role("heading", name="Inspect").wait_for()
        settle(page)
        assert page.get_by_text("Patch 1 of 1 in the current filter").count() == 1
        page.screenshot(path=shots / "conflict-in-inspect.png")
        browser.close()
    history = ReviewStore(tmp_path / "reviews.sqlite").history(str(demo_dir.resolve()))
    assert history[["reviewer", "verdict"]].values.tolist() == [["Dr Ann", "tumour"], ["Dr Ben", "normal"]]
    print(f"screenshots in {shots}")


# where the first point of the map's first trace is drawn on the page, from plotly's own axes
FIRST_POINT = """() => {
    const gd = document.querySelector('.js-plotly-plot');
    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, trace = gd._fullData[0];
    const box = gd.getBoundingClientRect();
    return [box.left + xa._offset + xa.l2p(trace.x[0]), box.top + ya._offset + ya.l2p(trace.y[0])];
}"""


def test_a_box_drawn_on_the_map_becomes_the_browse_selection(server, tmp_path):
    # a named reviewer, as every real one is: the switch to Browse must keep the URL's bound parameters
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.goto(f"{server}/map?reviewer=Dr+Map")
        # the map made in the background (its first look, by PCA, is shown meanwhile and picks nothing)
        page.get_by_text(re.compile(r"patches, mapped from")).wait_for(timeout=240_000)
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        plot.wait_for(timeout=60_000)
        settle(page)
        # a single click on a point in the chart's default mode opens that patch and its neighbours
        x, y = page.evaluate(FIRST_POINT)
        page.mouse.click(x, y)
        page.get_by_text("Most similar patches").first.wait_for(timeout=60_000)
        settle(page)
        page.screenshot(path=tmp_path / "map-click.png")
        page.locator(".modebar-btn[data-title='Box Select']").first.click()
        box = plot.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7, steps=12)
        page.mouse.up()
        button = page.get_by_role("button", name=re.compile(r"Browse these [\d,]+ patches"))
        button.wait_for(timeout=60_000)
        count = int(re.search(r"([\d,]+)", button.inner_text()).group(1).replace(",", ""))
        assert 1 < count < 600
        page.screenshot(path=tmp_path / "map-box.png")
        button.click()
        page.get_by_role("heading", name="Browse").wait_for()
        settle(page)
        page.screenshot(path=tmp_path / "browse-selection.png")
        assert errors_on(page) == 0
        assert page.get_by_text(f"{count:,} of 600 train patches match").count() == 1
        assert page.get_by_text(f"Map selection: {count:,} patches").count() == 1
        assert "reviewer=Dr+Map" in page.url
        browser.close()
