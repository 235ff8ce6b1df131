"""Every page on a 375 px phone, and the dashboard with JavaScript turned off."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Membership
from requests_app.models import Request
from tests.conftest import PUBLIC_PAGES as SITE_PAGES
from tests.factories import (
    PASSWORD,
    AccountFactory,
    ApiKeyFactory,
    AttemptFactory,
    MembershipFactory,
    ProjectFactory,
    RequestFactory,
    UserFactory,
)

# The first browser test may include installing Chromium through apt-get.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

PHONE = 375
PUBLIC_PAGES = [*SITE_PAGES, "/accounts/signup/", "/accounts/login/", "/accounts/password/reset/"]


@pytest.fixture
def workspace(transactional_db):
    """An owner with a project that has a key and a few requests with attempt histories."""
    user = UserFactory(email="erin@example.com")
    account = AccountFactory(name="Erin's workspace")
    MembershipFactory(user=user, account=account, role=Membership.Role.OWNER)
    project = ProjectFactory(account=account, name="Support bot")
    ApiKeyFactory(project=project, name="production")
    now = timezone.now()
    succeeded = RequestFactory(
        project=project,
        status="succeeded",
        attempt_count=2,
        finished_at=now,
        idempotency_key="ticket-4821-summary-with-a-rather-long-idempotency-key",
        model="a-model-with-a-long-name-2025-11-20-preview",
        usage={"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200},
        response_status_code=200,
    )
    AttemptFactory(
        request=succeeded,
        number=1,
        outcome="retryable_error",
        status_code=429,
        error_code="rate_limit_exceeded",
        latency_ms=90,
        retry_after_ms=1000,
        started_at=now - timedelta(seconds=3),
        finished_at=now - timedelta(seconds=2.9),
    )
    AttemptFactory(
        request=succeeded,
        number=2,
        outcome="success",
        status_code=200,
        latency_ms=640,
        started_at=now - timedelta(seconds=1),
        finished_at=now,
    )
    failed = RequestFactory(
        project=project,
        status="failed",
        endpoint="/v1/embeddings",
        attempt_count=1,
        finished_at=now,
        error={
            "message": "Could not connect to the upstream on any attempt.",
            "type": "upstream_error",
            "param": None,
            "code": "connecterror",
        },
    )
    AttemptFactory(
        request=failed,
        number=1,
        outcome="connection_error",
        status_code=None,
        error_code="connecterror",
        latency_ms=12,
        started_at=now,
        finished_at=now,
    )
    queued = RequestFactory(project=project)
    return {"user": user, "project": project, "requests": [succeeded, failed, queued]}


def sign_in(visitor, email: str) -> None:
    visitor.open("/accounts/login/")
    visitor.page.get_by_label(re.compile(r"^Email:?$")).fill(email)
    visitor.page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    visitor.page.get_by_role("button", name="Sign In").click()
    visitor.page.wait_for_url("**/app/")


def dashboard_pages(workspace) -> list[str]:
    project = workspace["project"].public_id
    return [
        "/app/",
        "/app/projects/",
        f"/app/projects/{project}/",
        f"/app/projects/{project}/keys/",
        f"/app/projects/{project}/requests/",
        f"/app/projects/{project}/requests/?status=bogus",
        *[f"/app/requests/{record.public_id}/" for record in workspace["requests"]],
        "/app/usage/",
        "/app/members/",
        "/app/security/",
        "/app/account/",
        "/accounts/email/",
        "/accounts/password/change/",
        "/accounts/sessions/",
    ]


def test_every_page_fits_a_phone(visitor_factory, workspace):
    visitor = visitor_factory(width=PHONE, height=800)

    for path in PUBLIC_PAGES:
        visitor.open(path)
        visitor.shot(path.strip("/").replace("/", "-") or "landing")
        visitor.assert_fits(PHONE)

    sign_in(visitor, "erin@example.com")
    for path in dashboard_pages(workspace):
        visitor.open(path)
        visitor.shot(re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-"))
        visitor.assert_fits(PHONE)

    assert visitor.errors == []


def test_the_dashboard_works_without_javascript(browser, app_server, artifacts, workspace):
    context = browser.new_context(java_script_enabled=False)
    try:
        from tests.browser.conftest import Visitor

        visitor = Visitor(context.new_page(), app_server.url, artifacts)
        page = visitor.page
        sign_in(visitor, "erin@example.com")
        project = workspace["project"]

        visitor.open(f"/app/projects/{project.public_id}/requests/")
        page.get_by_label("Status").select_option("failed")
        page.get_by_role("button", name="Filter").click()
        rows = page.locator("tbody tr")
        assert rows.count() == 1 and "failed" in rows.inner_text()

        queued = workspace["requests"][2]
        visitor.open(f"/app/requests/{queued.public_id}/")
        page.get_by_role("button", name="Cancel request").click()
        assert page.get_by_text("Cancel requested").is_visible()
        visitor.shot("canceled-without-javascript")
        assert Request.objects.get(pk=queued.pk).status == "canceled"
    finally:
        context.close()
