"""`python -m app.bench --data DIR [--run RUN_DIR] [--with-job MODEL [--job-as-before]]`: how long the pages
take to render.

Measured the way the tests drive the app (Streamlit's AppTest, in process, no browser), so a time is a
whole script run: the sidebar plus the page, as after a click. The first run after switching to a
page is reported apart from the median of the reruns that follow; the Map page is timed on a map already on
disk (the model-free one, made first when it is not). With `--run` (a run trained on DIR),
the reviewer's steps with a model: Browse the first time the model is used (its predictions not yet on
disk), a reload (a new session, predictions cached), the first Inspect, a filter change and 96 per page.
With `--viewer` (and `--run`), the slide viewer in headless Chromium against the app served as `make run`
serves it: the time until a 1400 x 900 viewer is fully drawn (OpenSeadragon's fully-loaded) after a jump
to 1:1 at a random scored place, on a 6,144 x 4,096 demo slide and on CMU-1-Small-Region.svs when
PCAM_SLIDES_DIR holds it; and a Browse page change (48 patches, from Enter in Page to the new page's
caption) in a second tab, quiet and while the viewer streams tiles (a jump every 300 ms).
With `--with-job MODEL`, Browse is timed while a training job of MODEL started through `jobs.start` runs on
the same machine (`--job-as-before`: started as jobs were before issue 10, at the app's priority with
OpenMP's default waiting), and the job's own steps per second are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

ENTRY = Path(__file__).with_name("streamlit_app.py")


def timed(at: AppTest) -> float:
    start = time.perf_counter()
    at.run()
    if at.exception:
        raise RuntimeError(f"the page raised: {at.exception[0].message}")
    return time.perf_counter() - start


def measure(page: str, actions: dict, repeats: int) -> list[tuple[str, float]]:
    """Seconds for: the first render of `page`, the median rerun, and each named action's median."""
    at = AppTest.from_file(str(ENTRY), default_timeout=900)
    at.run()
    at.switch_page(f"views/{page}.py")
    rows = [(f"{page}: first render", timed(at))]
    rerun = statistics.median(timed(at) for _ in range(repeats))
    rows.append((f"{page}: rerun (median of {repeats})", rerun))
    for name, act in actions.items():
        rows.append((f"{page}: {name} (median of {repeats})",
                     statistics.median(act(at) for _ in range(repeats))))
    return rows


def next_page(at: AppTest) -> float:
    box = at.number_input(key="browse_page")
    box.set_value(box.value + 1)
    return timed(at)


def toggle_label(at: AppTest) -> float:
    box = at.selectbox(key="browse_label")
    box.set_value("tumour" if box.value == "any" else "any")
    return timed(at)


def map_colour(at: AppTest) -> float:
    box = at.selectbox(key="map_colour")
    box.set_value("brightness" if box.value != "brightness" else "saturation")
    return timed(at)


def made_map() -> tuple[str, float]:
    """The training split's model-free map computed (or found) on disk before the Map page is timed."""
    from pcam_core import data
    from pcam_core.inference import embed

    store = data.open_dataset(os.environ["PCAM_DATA"])
    start = time.perf_counter()
    table = embed.map_table(store, "train")
    return f"Map: its {len(table):,} points made or read before the page (not a page step)", \
        time.perf_counter() - start


def toggle_split(at: AppTest) -> float:
    control = at.segmented_control(key="eda_split")
    control.set_value("train" if control.value == "all" else "all")
    return timed(at)


def with_model(run: Path, repeats: int) -> list[tuple[str, float]]:
    """The steps of issue 15's item 9, with the run's model chosen (it is the only run)."""
    from pcam_core import data

    store = data.open_dataset(os.environ["PCAM_DATA"])
    shutil.rmtree(Path(store.cache_dir) / "predictions", ignore_errors=True)
    rows = []
    at = AppTest.from_file(str(ENTRY), default_timeout=900)
    at.run()
    at.switch_page("views/browse.py")
    rows.append(("Browse: first render with a model, its predictions not yet computed", timed(at)))
    deadline = time.perf_counter() + 600
    while not list((Path(store.cache_dir) / "predictions").glob("train-*")):  # the split scored, on disk
        if time.perf_counter() > deadline:
            raise RuntimeError("the split was never scored")
        time.sleep(0.5)
    rows.append(("Browse: rerun once the split is scored", timed(at)))
    fresh = AppTest.from_file(str(ENTRY), default_timeout=900)  # a reload: a new session, same server
    fresh.run()
    fresh.switch_page("views/browse.py")
    rows.append(("Browse: reload (a new session; predictions on disk)", timed(fresh)))
    rows.append((f"Browse: change the outcome filter (median of {repeats})",
                 statistics.median(toggle(fresh, "browse_outcome", "false negative", "any")
                                   for _ in range(repeats))))
    fresh.segmented_control(key="browse_size").set_value(96)
    rows.append(("Browse: 96 per page", timed(fresh)))
    fresh.session_state["inspect_index"] = 1
    fresh.switch_page("views/inspect.py")
    rows.append(("Inspect: first render (8 views, Grad-CAM)", timed(fresh)))
    fresh.button(key="inspect_next").click()
    rows.append(("Inspect: next patch", timed(fresh)))
    return rows


def while_training(model: str, as_before: bool, repeats: int) -> list[tuple[str, float]]:
    """Browse's steps while a training job of `model` runs, and the job's seconds per step meanwhile."""
    from pcam_core import runs
    from pcam_core.runs import jobs
    from pcam_core.runs.config import TrainConfig

    if as_before:
        jobs.JOB_NICENESS = 0
        jobs.job_environment = lambda: {**os.environ, "PYTHONPATH": str(jobs.PACKAGE_PARENT)}
    run = jobs.start(TrainConfig(data=os.environ["PCAM_DATA"], model=model, epochs=50, device="cpu"))
    try:
        deadline = time.perf_counter() + 600
        while (runs.status(run).get("step") or 0) < 3:  # stepping: imports, packing and calibration done
            if time.perf_counter() > deadline or not runs.status(run)["alive"]:
                raise RuntimeError(f"the job never stepped: {jobs.log_tail(run)}")
            time.sleep(0.5)
        first, started = runs.status(run)["step"], time.perf_counter()
        label = f"while a {model} job trains" + (" (started as before)" if as_before else "")
        rows = [(f"{name}, {label}", value) for name, value in
                measure("browse", {"next page of 48": next_page, "label filter": toggle_label}, repeats)]
        steps = runs.status(run)["step"] - first
        rows.append((f"the job meanwhile: seconds per training step ({steps} steps)",
                     (time.perf_counter() - started) / max(steps, 1)))
        return rows
    finally:
        jobs.stop(run)
        deadline = time.perf_counter() + 120
        while runs.status(run)["alive"] and time.perf_counter() < deadline:
            time.sleep(0.5)


def toggle(at: AppTest, key: str, one, other) -> float:
    box = at.selectbox(key=key)
    box.set_value(one if box.value != one else other)
    return timed(at)


JUMP = """async ([x, y]) => {
    const s = document.querySelector('.pcam-viewer').viewerState, item = s.item();
    const frame = () => new Promise((r) => requestAnimationFrame(r));
    const start = performance.now();
    s.flyTo(x, y, 1, true);
    await frame(); await frame();  // the tiles the new view needs are asked for
    while (!item.getFullyLoaded() && performance.now() - start < 30000) await frame();
    return performance.now() - start;
}"""


def quiet(page, timeout: float = 300) -> None:
    page.wait_for_selector("h1", timeout=timeout * 1000)
    deadline, still = time.monotonic() + timeout, 0
    while still < 4 and time.monotonic() < deadline:
        still = still + 1 if not page.locator("[data-testid=stStatusWidget]").count() else 0
        time.sleep(0.25)


def map_of(slide: Path) -> Path | None:
    """The meta.json of the slide's finished map in this bench's cache, if there is one yet."""
    for meta in Path(os.environ["PCAM_CACHE_DIR"]).rglob("meta.json"):
        if Path(json.loads(meta.read_text()).get("slide", "")).resolve() == slide.resolve() and \
                (meta.parent / "cells.csv").is_file():
            return meta
    return None


def open_viewer(viewer, url: str, slide: Path) -> Path:
    """Opens the slide on the Slides page (scored first when needed) with the viewer at 1400 x 900;
    returns its map's meta.json."""
    viewer.goto(f"{url}/slides?slides_source=Example+slides&slides_stride=96")
    quiet(viewer)
    viewer.get_by_label("Slide", exact=True).click()
    viewer.get_by_role("option", name=slide.name).click()
    quiet(viewer)
    print(f"{slide.name}: scoring", file=sys.stderr, flush=True)
    if viewer.get_by_role("button", name="Score this slide").count():
        viewer.get_by_role("button", name="Score this slide").click()
    deadline = time.monotonic() + 900
    while (meta := map_of(slide)) is None:  # scored in the page, or by a background job
        assert time.monotonic() < deadline, f"{slide.name} was not scored in 15 minutes"
        time.sleep(1)
    viewer.reload()
    viewer.wait_for_selector(".pcv-view[data-loaded=yes]", timeout=120_000)
    viewer.evaluate("() => { const v = document.querySelector('.pcv-view'); v.style.flex = 'none'; "
                    "v.style.width = '1400px'; v.parentElement.parentElement.style.height = '960px'; }")
    viewer.wait_for_selector(".pcv-view[data-loaded=yes]")
    return meta


def time_jumps(viewer, slide: Path, meta: Path, repeats: int, rng) -> list[tuple[str, float]]:
    from pcam_core.slides.cache import load_map

    slide_map = load_map(meta.parent)
    rows, cols = np.nonzero(np.isfinite(slide_map.prob))
    size, times = slide_map.grid.cell_size, []
    for i in rng.choice(len(rows), size=repeats, replace=len(rows) < repeats):
        times.append(viewer.evaluate(JUMP, [float((cols[i] + 0.5) * size), float((rows[i] + 0.5) * size)]))
    drawer = viewer.locator(".pcv-view").get_attribute("data-drawer")
    return [(f"viewer ({drawer} drawer), {slide.name}: jump to 1:1 -> 1400 x 900 fully drawn, median (s)",
             statistics.median(times) / 1000),
            (f"viewer, {slide.name}: the same, slowest of {repeats} (s)", max(times) / 1000)]


def time_browse(browser, viewer, url: str, repeats: int) -> list[tuple[str, float]]:
    """A Browse page change in a second tab, quiet and while the viewer streams tiles."""
    browse = browser.new_page(viewport={"width": 1440, "height": 1100})
    browse.goto(f"{url}/browse")
    quiet(browse)

    def page_change(number: int) -> float:
        start = time.perf_counter()
        browse.get_by_label("Page", exact=True).fill(str(number))
        browse.get_by_label("Page", exact=True).press("Enter")
        browse.get_by_text(f"page {number} of").first.wait_for(timeout=60_000)
        seconds = time.perf_counter() - start
        quiet(browse)  # the rerun's last elements in, before the next change
        return seconds

    page_change(2)
    rows = [("Browse, a page of 48, quiet: median (s)",
             statistics.median(page_change(3 + k) for k in range(repeats)))]
    viewer.evaluate("""() => { const s = document.querySelector('.pcam-viewer').viewerState;
        const far = (n) => Math.random() * n * s.data.cell;
        window.streaming = setInterval(() => s.flyTo(far(s.data.cols), far(s.data.rows), 1, true), 300);
    }""")
    rows.append(("Browse, a page of 48, while the viewer streams tiles: median (s)",
                 statistics.median(page_change(3 + repeats + k) for k in range(repeats))))
    return rows


def viewer_timings(url: str, slides: list[Path], repeats: int) -> list[tuple[str, float]]:
    from playwright.sync_api import sync_playwright

    rows, rng = [], np.random.default_rng(0)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        viewer = browser.new_page(viewport={"width": 1900, "height": 1300})
        for slide in slides:
            rows += time_jumps(viewer, slide, open_viewer(viewer, url, slide), repeats, rng)
        rows += time_browse(browser, viewer, url, repeats)
        browser.close()
    return rows


def viewer_bench(data: Path, run: Path, tmp: Path, repeats: int) -> list[tuple[str, float]]:
    """Serves the app (`streamlit run app/server.py`) on the demo slide and CMU, and times the viewer."""
    from pcam_core.slides.demo import make_demo_slide
    from pcam_core.slides.reader import list_slides

    folder = tmp / "slides"
    make_demo_slide(folder / "demo-6144.tif", 6144, 4096, seed=0)
    real = Path(os.environ.get("PCAM_SLIDES_DIR", "")) / "CMU-1-Small-Region.svs"
    if real.is_file():
        (folder / real.name).symlink_to(real.resolve())
    env = {**os.environ, "PCAM_SLIDES_DIR": str(folder), "PCAM_CACHE_DIR": str(tmp / "cache")}
    os.environ["PCAM_CACHE_DIR"] = env["PCAM_CACHE_DIR"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/server.py", "--server.port",
                               str(port), "--server.headless", "true"], cwd=ENTRY.parents[1], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        return viewer_timings(url, list_slides(folder), repeats)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="dataset folder (packed beforehand)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--run", type=Path, help="a run trained on --data: also time the steps with its model")
    p.add_argument("--with-job", metavar="MODEL", help="time Browse while a training job of MODEL runs")
    p.add_argument("--job-as-before", action="store_true", help="start that job as before issue 10")
    p.add_argument("--viewer", action="store_true", help="the slide viewer in Chromium (needs --run)")
    args = p.parse_args()
    os.environ["PCAM_DATA"] = str(args.data.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PCAM_REVIEW_DB"] = str(Path(tmp) / "reviews.sqlite")
        if args.viewer:
            os.environ["PCAM_RUNS_DIR"] = str(Path(tmp) / "runs")
            shutil.copytree(args.run, Path(tmp) / "runs" / args.run.name)
            rows = viewer_bench(args.data, args.run, Path(tmp), args.repeats)
        elif args.with_job:
            os.environ["PCAM_RUNS_DIR"] = str(Path(tmp) / "runs")
            rows = while_training(args.with_job, args.job_as_before, args.repeats)
        elif args.run:
            os.environ["PCAM_RUNS_DIR"] = str(Path(tmp) / "runs")
            shutil.copytree(args.run, Path(tmp) / "runs" / args.run.name)
            rows = with_model(Path(tmp) / "runs" / args.run.name, args.repeats)
        else:
            os.environ.setdefault("PCAM_RUNS_DIR", str(Path(tmp) / "runs"))
            rows = measure("browse", {"next page of 48": next_page, "label filter": toggle_label},
                           args.repeats)
            rows += measure("eda", {"split filter": toggle_split}, args.repeats)
            rows.append(made_map())
            rows += measure("map", {"colour by another statistic": map_colour}, args.repeats)
    print("| measurement | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
