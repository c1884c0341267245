"""`python -m app.bench --data DIR [--run RUN_DIR] [--with-job MODEL [--job-as-before]]`: how long the pages
take to render.

Measured the way the tests drive the app (Streamlit's AppTest, in process, no browser), so a time is a
whole script run: the sidebar plus the page, as after a click. The first run after switching to a
page is reported apart from the median of the reruns that follow; the Map page is timed on a map already on
disk (the model-free one, made first when it is not). With `--run` (a run trained on DIR),
the reviewer's steps with a model: Browse the first time the model is used (its predictions not yet on
disk), a reload (a new session, predictions cached), the first Inspect, a filter change and 96 per page.
With `--with-job MODEL`, Browse is timed while a training job of MODEL started through `jobs.start` runs on
the same machine (`--job-as-before`: started as jobs were before issue 10, at the app's priority with
OpenMP's default waiting), and the job's own steps per second are reported beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="dataset folder (packed beforehand)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--run", type=Path, help="a run trained on --data: also time the steps with its model")
    p.add_argument("--with-job", metavar="MODEL", help="time Browse while a training job of MODEL runs")
    p.add_argument("--job-as-before", action="store_true", help="start that job as before issue 10")
    args = p.parse_args()
    os.environ["PCAM_DATA"] = str(args.data.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PCAM_REVIEW_DB"] = str(Path(tmp) / "reviews.sqlite")
        if args.with_job:
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
