"""`python -m app.bench --data DIR`: how long the Browse and Explore pages take to render.

Measured the way the tests drive the app (Streamlit's AppTest, in process, no browser), so a time is a
whole script run: the sidebar plus the page, as after a click. The first run after switching to a
page is reported apart from the median of the reruns that follow.
"""

from __future__ import annotations

import argparse
import os
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


def toggle_split(at: AppTest) -> float:
    control = at.segmented_control(key="eda_split")
    control.set_value("train" if control.value == "all" else "all")
    return timed(at)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="dataset folder (packed beforehand)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    os.environ["PCAM_DATA"] = str(args.data.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PCAM_RUNS_DIR", str(Path(tmp) / "runs"))
        os.environ["PCAM_REVIEW_DB"] = str(Path(tmp) / "reviews.sqlite")
        rows = measure("browse", {"next page of 48": next_page, "label filter": toggle_label}, args.repeats)
        rows += measure("eda", {"split filter": toggle_split}, args.repeats)
    print("| measurement | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
