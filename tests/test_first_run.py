"""The first `make run` a newcomer does, end to end in headless Chromium: on a fresh copy of the
repository (the installed environment linked in, so nothing is downloaded), the app opens on the demo set,
a first model trains in the background with its progress on the Train page, and Inspect shows that
model's probability and CAM soon after. Screenshots go to tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# the app's promise for two CPU cores: a usable model about a minute after it opens; the bar leaves room
# for a loaded CI machine
MODEL_WITHIN_S = 150

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)
if not shutil.which("make"):
    pytest.skip("make is absent", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def fresh_copy(to: Path) -> Path:
    """The repository's files as a clone would have them (tracked and new, not ignored), with this
    test's own environment as its .venv."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    (to / ".venv").symlink_to(Path(sys.prefix))
    return to


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            assert proc.poll() is None, f"make run ended with {proc.returncode}"
            assert time.monotonic() < deadline, f"the app did not open within {timeout} s"
            time.sleep(0.5)


def settle(page, timeout: float = 90) -> None:
    page.wait_for_selector("h1", timeout=timeout * 1000)
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 4 and time.monotonic() < deadline:
        busy = page.locator("[data-testid=stStatusWidget], [data-testid=stSkeleton]").count()
        quiet = 0 if busy else quiet + 1
        time.sleep(0.25)


def test_make_run_on_a_fresh_copy_opens_the_app_and_a_first_model_reaches_inspect(tmp_path):
    copy = fresh_copy(tmp_path / "pcam-review")
    port = 8600 + os.getpid() % 300
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCAM_")}
    env.update(PCAM_CACHE_DIR=str(tmp_path / "cache"), PCAM_REVIEW_DB=str(tmp_path / "reviews.sqlite"))
    log = (tmp_path / "make-run.log").open("wb")
    start = time.monotonic()
    # -o: the linked environment counts as installed (a fresh copy's requirement files are newer than it)
    proc = subprocess.Popen(["make", "-o", ".venv/.installed", "run", f"PORT={port}"], cwd=copy, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        wait_healthy(url, proc, timeout=300)
        opened = time.monotonic() - start
        runs = [p for p in (copy / "models" / "runs").iterdir() if p.is_dir()]
        assert len(runs) == 1 and runs[0].name.startswith("base_cnn"), "make run starts one first model"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{url}/train")
            settle(page)
            page.screenshot(path=shots / "train-while-the-first-model-trains.png")
            assert runs[0].name in page.inner_text("body")  # the running job is on the Train page
            deadline = time.monotonic() + MODEL_WITHIN_S
            while not (runs[0] / "best.pt").is_file():  # the user watches the Train page meanwhile
                assert time.monotonic() < deadline, (f"no checkpoint {MODEL_WITHIN_S} s after the app opened "
                                                     f"(see {shots})")
                time.sleep(1)
            page.screenshot(path=shots / "train-after-the-first-epoch.png")
            page.goto(f"{url}/inspect")
            settle(page)
            assert page.get_by_text("P(tumour)").count(), f"no model on Inspect (see {shots})"
            usable = time.monotonic() - start
            page.screenshot(path=shots / "inspect-with-the-first-model.png", full_page=True)
            assert page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count() == 0
            assert page.get_by_text("Centre focus").count()  # the CAM is drawn with it
            browser.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
    print(f"make run: app open after {opened:.0f} s, first model on Inspect after {usable:.0f} s "
          f"({usable - opened:.0f} s after opening); screenshots in {shots}")
