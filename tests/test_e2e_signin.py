"""Sign-in end to end: a local OpenID Connect provider (oidc-provider-mock) on 127.0.0.1, the app with an
[auth] section pointing at it, two people signing in through it in headless Chromium; their verdicts carry
their verified identities. A cookie changed by hand is no sign-in. Without [auth], the app will not serve
another address than this machine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pcam_core.review.store import ReviewStore

pytest_plugins = ["apptest"]
pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
REPO = Path(__file__).resolve().parents[1]
USERS = {"alice": "Alice Adams", "bob": "Bob Brown"}

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
pytest.importorskip("oidc_provider_mock")

from test_e2e_browser import free_port, settle  # noqa: E402


def wait_for(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            assert proc.poll() is None, f"{what} stopped: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.3)


@pytest.fixture
def signed_app(demo_dir, trained_runs, tmp_path):
    """The provider and the app (with [auth] pointing at it), both on free localhost ports."""
    provider_port, app_port = free_port(), free_port()
    claims = [json.dumps({"sub": sub, "name": name, "email": f"{sub}@lab.test"})
              for sub, name in USERS.items()]
    provider = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--port", str(provider_port),
                                 *(arg for c in claims for arg in ("--user-claims", c))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    issuer = f"http://127.0.0.1:{provider_port}"
    wait_for(f"{issuer}/.well-known/openid-configuration", provider, "the OpenID provider")
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f"""[auth]
redirect_uri = "http://localhost:{app_port}/oauth2callback"
cookie_secret = "a-test-secret-of-some-length-0123456789"
client_id = "pcam-review"
client_secret = "pcam-review-secret"
server_metadata_url = "{issuer}/.well-known/openid-configuration"
""")
    env = {**os.environ, "PCAM_DATA": str(demo_dir), "PCAM_RUNS_DIR": str(trained_runs),
           "PCAM_REVIEW_DB": str(tmp_path / "reviews.sqlite"), "PCAM_ADMINS": "alice@lab.test"}
    env.pop("PCAM_SAMPLE_DIR", None)
    env.pop("PCAM_DB_URL", None)
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/server.py", "--server.port",
                            str(app_port), "--server.headless", "true", "--secrets.files", str(secrets)],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://localhost:{app_port}"
    wait_for(f"{url}/_stcore/health", app, "the app")
    yield url, issuer
    for proc in (app, provider):
        proc.terminate()
        proc.wait(timeout=20)


def sign_in(page, url: str, sub: str) -> None:
    page.goto(f"{url}/inspect")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name=sub, exact=True).click()  # the provider's page: a predefined user
    page.wait_for_url(f"{url}/**", timeout=60_000)
    settle(page)
    page.goto(f"{url}/inspect")  # signed in (the cookie): straight to the page asked for
    settle(page)


def test_two_people_sign_in_and_their_verdicts_carry_who_they_are(signed_app, tmp_path):
    url, issuer = signed_app
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        pages = {}
        for sub, key in (("alice", "y"), ("bob", "n")):  # Yes and No, by Inspect's keys
            context = browser.new_context(viewport={"width": 1440, "height": 1400})
            page = pages[sub] = context.new_page()
            page.goto(url)
            page.get_by_role("button", name="Sign in").wait_for(timeout=120_000)
            page.screenshot(path=shots / f"sign-in-{sub}.png")
            assert page.get_by_label("Reviewer", exact=True).count() == 0  # nothing to type: who is known
            sign_in(page, url, sub)
            assert page.get_by_text(f"Signed in as {USERS[sub]}").count() == 1
            if sub == "bob":  # blind: nothing of Alice's answer on this patch until Bob has answered
                assert page.get_by_text("Blind review on this dataset").count() == 1
                assert page.get_by_text("Alice Adams").count() == 0
                assert page.get_by_text("History of this patch").count() == 0
            page.get_by_role("heading", name="Inspect").first.click()
            page.keyboard.press(key)
            settle(page)
            page.screenshot(path=shots / f"verdict-{sub}.png")
            if sub == "bob":
                page.get_by_text("History of this patch (2 verdicts)").wait_for(timeout=30_000)
            else:  # the admin turns blind review on for the dataset
                page.goto(f"{url}/admin")
                settle(page)
                page.get_by_text("Blind", exact=True).click()
                page.get_by_role("button", name="Save blind mode").click()
                page.get_by_text("Blind review on for").wait_for(timeout=60_000)

        alice = pages["alice"]  # the Reviewers page names both, as they signed in
        alice.goto(f"{url}/reviewers")
        settle(alice)
        with alice.expect_download() as download:  # the tables are drawn on a canvas: read their CSV
            alice.get_by_role("button", name="Agreement tables (CSV)").click()
        people = Path(download.value.path()).read_text()
        assert "Alice Adams" in people and "Bob Brown" in people
        bob = pages["bob"]  # a reviewer: no admin page
        bob.goto(f"{url}/admin")
        settle(bob)
        assert bob.get_by_text("Only an admin opens this page").count() == 1
        alice = pages["alice"]  # the first admin (PCAM_ADMINS): deactivates bob
        alice.goto(f"{url}/admin")
        settle(alice)
        assert alice.get_by_text("Bob Brown").count() >= 1
        alice.get_by_role("combobox", name="Person").click()
        alice.get_by_role("option", name="Bob Brown (bob@lab.test)").click()
        alice.get_by_role("combobox", name="Role").click()
        alice.get_by_role("option", name="reviewer").click()
        alice.get_by_text("Active", exact=True).click()  # unticked
        alice.get_by_role("button", name="Save the change").click()
        alice.get_by_text("Bob Brown: reviewer, deactivated.").wait_for(timeout=60_000)
        alice.screenshot(path=shots / "admin.png", full_page=True)
        bob.goto(f"{url}/inspect")  # the same cookie, deactivated: refused
        bob.get_by_text("your access to this app was withdrawn").wait_for(timeout=60_000)
        assert bob.get_by_role("heading", name="Inspect").count() == 0

        context = alice.context  # a cookie changed by hand gets the sign-in page, not alice
        cookie = next(c for c in context.cookies() if c["name"].startswith("_streamlit_user"))
        context.add_cookies([{**cookie, "value": cookie["value"][:-6] + "AAAAAA"}])
        alice.goto(url)
        alice.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
        assert alice.get_by_text("Signed in as").count() == 0
        browser.close()
    store = ReviewStore(tmp_path / "reviews.sqlite")
    rows = store.every_verdict()
    assert rows[["reviewer", "reviewer_id", "verified", "verdict", "blind"]].values.tolist() == [
        ["Alice Adams", f"{issuer}|alice", True, "tumour", False],
        ["Bob Brown", f"{issuer}|bob", True, "normal", True]]  # Bob's answer given blind
    trail = store.events()
    signed = trail.loc[trail["kind"] == "sign-in", "actor"].tolist()
    assert signed == ["Alice Adams", "Bob Brown"]  # one event a sign-in, however many pages it opened
    assert trail.loc[trail["kind"] == "user changed", "actor"].tolist() == ["Alice Adams"]


def test_without_sign_in_the_app_will_not_serve_another_address(demo_dir, tmp_path):
    env = {**os.environ, "PCAM_DATA": str(demo_dir), "PCAM_REVIEW_DB": str(tmp_path / "reviews.sqlite")}
    done = subprocess.run([sys.executable, "-m", "streamlit", "run", "app/server.py", "--server.address",
                           "0.0.0.0", "--server.port", str(free_port()), "--server.headless", "true"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "refusing to serve PCam Review on 0.0.0.0 without sign-in" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
