"""A PostgreSQL that is up but misbehaves, as a managed one does: read-only after a
failover, or canceling slow statements. Callers get a 503 to retry, the dashboard an error
page; no accepted request is lost and none runs twice."""

import logging
import re
import threading
import time

import httpx
import psycopg
import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.urls import reverse

from requests_app.models import Request
from tests.conftest import record_every_heartbeat, wait_until
from tests.factories import PASSWORD
from tests.outage import database_read_only, drop_every_other_connection, finished_request
from tests.requests_app.test_outages import assert_unavailable

CHAT = [{"role": "user", "content": "misbehaving"}]


def post_chat(url: str, tenant, model: str = "gpt-test", **headers) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}", **headers},
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_a_call_to_a_read_only_database_gets_a_503_to_retry(tenant, live_api, caplog):
    assert post_chat(live_api.url, tenant).status_code == 200

    with caplog.at_level(logging.WARNING), database_read_only():
        answer = post_chat(live_api.url, tenant)
        listing = httpx.get(
            f"{live_api.url}/v1/requests",
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
            timeout=60,
        )

    assert_unavailable(answer)
    assert "ReqRun's database" in answer.json()["error"]["message"]
    assert listing.status_code in (200, 503), listing.text  # a read may still be served
    assert Request.objects.count() == 1  # nothing half-recorded
    unavailable = [r for r in caplog.records if r.getMessage() == "dependency unavailable"]
    assert unavailable and unavailable[0].sqlstate == "25006"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.timeout(120)
def test_an_attempt_that_ends_while_the_database_is_read_only_is_recorded_once(
    tenant, live_api, fake_upstream
):
    response = post_chat(live_api.url, tenant, model="sleep-1000", Prefer="respond-async")
    wait_until(lambda: Request.objects.filter(status="running").exists())
    with database_read_only():
        time.sleep(4)  # the upstream answers meanwhile; its conclusion cannot be written

    request = finished_request(
        response.json()["id"],
        message="the attempt's result was not recorded once the database took writes",
    )
    assert request.status == "succeeded"
    assert [a.outcome for a in request.attempts.all()] == ["success"]
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_readyz_is_not_ready_while_the_database_is_read_only(transactional_db):
    record_every_heartbeat()
    client = Client()
    assert client.get("/readyz").status_code == 200

    with database_read_only():
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["down"] == ["postgres_read_only"]


def test_signing_in_to_a_read_only_database_shows_an_error_page(tenant, live_api, caplog):
    with httpx.Client(base_url=live_api.url, timeout=60) as browser:
        form = browser.get(reverse("account_login"))
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        with caplog.at_level(logging.WARNING), database_read_only():
            response = browser.post(
                reverse("account_login"),
                data={
                    "login": tenant.user.email,
                    "password": PASSWORD,
                    "csrfmiddlewaretoken": token,
                },
                # The cookie is marked Secure; this plain-HTTP test server sends it by hand.
                headers={
                    "Referer": f"{live_api.url}/",
                    "Cookie": f"csrftoken={form.cookies['csrftoken']}",
                },
            )

    assert response.status_code == 503, response.text[-1500:]
    page = response.text
    assert 'class="site-header"' in page
    assert "Traceback" not in page
    assert "try again" in page.lower()
    assert int(response.headers["Retry-After"]) >= 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def statement_timeout(transactional_db):
    """Every new session of the test database cancels a statement after half a second,
    as a deployment's `statement_timeout` does."""
    params = connection.settings_dict
    name = connection.ops.quote_name(params["NAME"])
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} SET statement_timeout = 500")
        cursor.execute("SET statement_timeout = 500")  # the test's own, which pages use
    drop_every_other_connection()
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER DATABASE {name} RESET statement_timeout")
            cursor.execute("RESET statement_timeout")
        drop_every_other_connection()


def locked(table: str, release: threading.Event):
    """A session holding `table` locked until `release` is set."""
    params = connection.settings_dict
    held = threading.Event()

    def hold():
        with psycopg.connect(
            host=params["HOST"],
            port=params["PORT"],
            user=params["USER"],
            password=params["PASSWORD"],
            dbname=params["NAME"],
        ) as session:
            session.execute("SET statement_timeout = 0")
            session.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    return thread


@pytest.mark.timeout(120)
def test_a_call_whose_statement_is_canceled_gets_a_503_and_a_page_an_error_page(
    tenant, live_api, statement_timeout, caplog
):
    client = Client(raise_request_exception=False)
    client.force_login(tenant.user)
    release = threading.Event()
    thread = locked(Request._meta.db_table, release)
    try:
        with caplog.at_level(logging.WARNING):
            answer = post_chat(live_api.url, tenant)
            page = client.get(reverse("request-list", args=[tenant.project.public_id]))
    finally:
        release.set()
        thread.join(30)

    assert_unavailable(answer)
    assert page.status_code == 503
    assert "Traceback" not in page.content.decode()
    assert not Request.objects.exists()
    assert "57014" in [getattr(r, "sqlstate", None) for r in caplog.records]


def test_a_middleware_that_meets_an_outage_answers_the_503_page_logged_once_at_warning(
    alice, statement_timeout, caplog
):
    browser = Client(raise_request_exception=False)
    browser.force_login(alice)
    release = threading.Event()
    # /healthz reads nothing: the session is first read after the view has answered, by
    # the middleware that marks a signed-in user's pages no-store.
    thread = locked(Session._meta.db_table, release)
    try:
        with caplog.at_level(logging.WARNING):
            response = browser.get(reverse("healthz"))
    finally:
        release.set()
        thread.join(30)

    assert response.status_code == 503
    assert 1 <= int(response["Retry-After"]) <= 10
    assert "briefly unavailable" in response.content.decode()
    assert "Content-Security-Policy" in response.headers  # the outer middleware still ran
    logged = [
        (record.levelname, record.getMessage(), getattr(record, "sqlstate", None))
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert logged == [("WARNING", "dependency unavailable", "57014")]


def test_a_session_the_read_only_database_cannot_save_is_the_503_page_not_a_400(
    alice_account, alice, transactional_db, caplog
):
    browser = Client(raise_request_exception=False)
    browser.force_login(alice)
    # Switching accounts only reads in its view; the session middleware then writes the
    # session, which Django reports as one deleted meanwhile when the write is refused.
    with connection.cursor() as cursor:
        cursor.execute("SET default_transaction_read_only = on")
    try:
        with caplog.at_level(logging.WARNING):
            response = browser.post(reverse("switch-account"), {"account": alice_account.public_id})
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET default_transaction_read_only")

    assert response.status_code == 503
    assert 1 <= int(response["Retry-After"]) <= 10
    assert "briefly unavailable" in response.content.decode()
    logged = [
        (record.levelname, record.getMessage(), getattr(record, "sqlstate", None))
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert logged == [("WARNING", "dependency unavailable", "25006")]
