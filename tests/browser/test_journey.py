"""A newcomer's first minutes, in a real browser: sign up → first API call → see it traced."""

import os
import re
import subprocess
import sys

import openai
import pytest
from django.core import mail

from tests.conftest import wait_until

# The first browser test may include installing Chromium through apt-get.
pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.timeout(900)]

PASSWORD = "violet-kettle-harbor-91"


def confirmation_path() -> str:
    message = wait_until(
        lambda: next((m for m in mail.outbox if "confirm" in m.subject.lower()), None),
        timeout=15,
        message="no confirmation email was sent",
    )
    return re.search(r"https?://[^/\s]+(/accounts/confirm-email/\S+)", message.body).group(1)


def run_python(program: str, *, api_key: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "REQRUN_API_KEY": api_key},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sign_up_to_first_traced_request(
    transactional_db, visitor_factory, app_server, app_worker, upstream
):
    visitor = visitor_factory()
    page = visitor.page

    # Landing → sign up, which says what the user accepts.
    visitor.open("/")
    visitor.shot("landing")
    page.get_by_role("link", name="Start free").click()
    page.wait_for_url("**/accounts/signup/")
    assert page.get_by_text("By signing up you accept").is_visible()
    page.get_by_label("Email").fill("dana@example.com")
    page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    page.get_by_label("Password (again)").fill(PASSWORD)
    visitor.shot("signup")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/accounts/confirm-email/")
    visitor.shot("verification-sent")

    # The link from the captured email confirms the address and signs the user in.
    visitor.open(confirmation_path())
    visitor.shot("confirm-email")
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/app/")
    visitor.shot("dashboard")

    # A project, wired to the fake upstream with a provider key.
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Projects").click()
    page.get_by_label("Name").fill("Chatbot")
    page.get_by_role("button", name="Create project").click()
    page.wait_for_url(re.compile(r".*/app/projects/prj_\w+/$"))
    assert page.get_by_text("Project “Chatbot” created").is_visible()
    # The primary upstream: its base URL and provider key, saved together.
    page.get_by_role("link", name="Edit primary").click()
    page.get_by_label("Base URL").fill(upstream.base_url)
    page.get_by_label(re.compile(r"^Provider API key:?$")).fill("sk-test-provider-key-1234")
    page.get_by_role("button", name="Save upstream").click()
    assert page.get_by_text("Upstream “primary” saved; its provider key ends in …1234").is_visible()
    visitor.shot("project-settings")

    # An API key, copied from the page it is shown on once.
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("production")
    page.get_by_role("button", name="Create API key").click()
    raw_key = page.locator("#new-api-key-field").input_value()
    assert raw_key.startswith("rr_")
    visitor.shot("api-key-created")

    # The official SDK against ReqRun: a 503 first, retried to success by the real worker.
    client = openai.OpenAI(
        base_url=f"{app_server.url}/v1", api_key=raw_key, max_retries=0, timeout=60
    )
    raw = client.chat.completions.with_raw_response.create(
        model="script:503,200", messages=[{"role": "user", "content": "Say hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    request_id = raw.headers["reqrun-request-id"]
    assert raw.headers["reqrun-attempts"] == "2"

    # The request is in the list, and its detail shows both attempts.
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Requests").click()
    row = page.get_by_role("row").filter(has_text=request_id)
    assert "succeeded" in row.inner_text()
    visitor.shot("requests")
    row.get_by_role("link", name=request_id).click()
    page.wait_for_url(f"**/app/requests/{request_id}/")
    timeline = page.locator("ol.timeline")
    assert "Attempt 1" in timeline.inner_text() and "HTTP 503" in timeline.inner_text()
    assert "Attempt 2" in timeline.inner_text() and "HTTP 200" in timeline.inner_text()
    assert "waited" in timeline.inner_text()
    assert page.locator("#response-body").is_visible()
    visitor.shot("request-detail")

    # Usage counts it.
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Usage").click()
    assert page.get_by_text("1 of 10,000").is_visible()
    assert page.locator("svg.usage-chart").count() == 2
    assert page.get_by_role("link", name="Chatbot").is_visible()
    visitor.shot("usage")

    # The docs show this server's base URL, and their Python snippets run as printed.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Docs").click()
    assert page.locator("#base-url").inner_text() == f"{app_server.url}/v1"
    visitor.shot("docs")
    snippet = {
        name: page.locator(f"#code-{name}").inner_text()
        for name in ("python", "idempotency", "async", "stream")
    }
    for program in (
        snippet["python"] + "\n" + snippet["idempotency"],
        snippet["async"],
        snippet["python"] + "\n" + snippet["stream"],
    ):
        assert "Hello" in run_python(program, api_key=raw_key)

    # The legal pages open from the footer.
    for link, heading in [
        ("Terms", "Terms of Service"),
        ("Privacy", "Privacy Policy"),
        ("Refund Policy", "Refund Policy"),
    ]:
        page.get_by_role("contentinfo").get_by_role("link", name=link).click()
        assert page.get_by_role("heading", level=1, name=heading).is_visible()
        visitor.shot(f"legal-{link.lower().replace(' ', '-')}")

    assert visitor.errors == []
