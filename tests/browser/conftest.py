"""Browser tests: Debian's Chromium driven by Playwright against the real ASGI app.

Chromium comes from apt (Playwright's own browser download is not used): the set-up
installs it when /usr/bin/chromium is missing. The app runs under uvicorn in this process,
so the emails it sends land in Django's locmem outbox; a real Celery worker runs requests.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, WorkerProcess
from tests.fake_upstream import FakeUpstream
from tests.requests_app.conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"


def ensure_chromium() -> Path:
    """Install Debian's chromium package if it is not there (CI is a fresh root machine)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if not shutil.which("apt-get"):
        pytest.fail("Chromium is missing and apt-get is not available to install it.")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "chromium"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    if not CHROMIUM.exists():
        pytest.fail("apt-get installed chromium but /usr/bin/chromium is still missing.")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(django_db_setup):
    """Chromium for one test module.

    Playwright's sync API keeps an asyncio loop running in this thread, so Django would
    refuse the test's own ORM calls (and the test database flush) as "async unsafe".
    The flag is set only while Playwright runs, and Playwright stops with the module, so
    later suites keep Django's guard.
    """
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


# Module-scoped, not session-scoped like tests/requests_app's: this worker must be gone
# before the suites that start, stop and kill their own workers run.
@pytest.fixture(scope="module")
def app_server(django_db_setup):
    server = LiveServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app_worker(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        process = WorkerProcess(concurrency=4).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def artifacts(request) -> Path:
    """test-artifacts/<test name>/: screenshots of every page the test visits."""
    folder = ARTIFACTS / request.node.name.replace("[", "-").replace("]", "")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# The outermost elements that stick out past the viewport (their parent does not).
OVERFLOWING = """(width) => Array.from(document.querySelectorAll("body *"))
  .filter((element) => element.getBoundingClientRect().right > width + 1
    && element.parentElement.getBoundingClientRect().right <= width + 1)
  .slice(0, 5)
  .map((element) => `<${element.tagName.toLowerCase()} class="${element.className}">`
    + ` ${Math.round(element.getBoundingClientRect().right)}px`)"""


class Visitor:
    """A browser tab that records console errors and takes numbered screenshots."""

    def __init__(self, page, base_url: str, folder: Path):
        self.page = page
        self.base_url = base_url
        self.folder = folder
        self.errors: list[str] = []
        self.shots = 0
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.set_default_timeout(15_000)

    def _console(self, message):
        if message.type == "error":
            self.errors.append(f"{self.page.url}: {message.text}")

    def open(self, path: str):
        response = self.page.goto(self.base_url + path)
        assert response is not None and response.ok, (
            f"{path} answered {response and response.status}"
        )
        return response

    def shot(self, name: str) -> None:
        self.shots += 1
        self.page.screenshot(path=self.folder / f"{self.shots:02d}-{name}.png", full_page=True)

    def assert_fits(self, width: int) -> None:
        """No horizontal scrolling of the page; the failure names what sticks out."""
        scroll_width = self.page.evaluate("document.documentElement.scrollWidth")
        if scroll_width > width:
            culprits = self.page.evaluate(OVERFLOWING, width)
            pytest.fail(f"{self.page.url} is {scroll_width}px wide at {width}px: {culprits}")


@pytest.fixture
def visitor_factory(browser, app_server, artifacts):
    contexts = []

    def make(*, width: int = 1280, height: int = 900) -> Visitor:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        return Visitor(context.new_page(), app_server.url, artifacts)

    yield make
    for context in contexts:
        context.close()
