"""PostgreSQL refusing new connections (53300 `sorry, too many clients already`, or a role's
or database's CONNECTION LIMIT reached) while it still serves the ones already open: each
process meets it when its pool must open a connection. Callers get a 503 to retry, the
dashboard the 503 page, /readyz says `postgres`; an accepted request is not lost."""

import json
import logging
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from requests_app.engine.accept import accept_request
from requests_app.engine.recovery import sweep
from requests_app.models import Request
from tests.conftest import record_every_heartbeat, wait_until
from tests.outage import connections_exhausted, finished_request
from tests.requests_app.conftest import Tenant

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "too many clients"}]}


@contextmanager
def emptied_pool():
    """This process's pool, emptied: its next query opens a connection, waiting 1 s for
    one (DB_POOL_TIMEOUT, cut short). Replaced by one as the settings make it on leaving."""
    connection.close()
    connection.close_pool()
    pool = connection.pool  # a new one, not opened yet
    pool.timeout = 1.0
    try:
        yield pool
    finally:
        connection.close_pool()


@contextmanager
def refused_in_this_process():
    """`connections_exhausted`, met by this process too. The test's own queries wait for
    the end of the block."""
    with emptied_pool() as pool, connections_exhausted(spare_own_session=False):
        yield pool


def unavailable_warnings(caplog) -> list:
    return [r for r in caplog.records if r.getMessage() == "dependency unavailable"]


@pytest.fixture
def customer(transactional_db, fake_upstream):
    fake_upstream.reset()
    return Tenant(email="alice@example.com", upstream_url=fake_upstream.base_url)


def post_chat(client: Client, customer: Tenant, **headers):
    return client.post(
        "/v1/chat/completions",
        data=json.dumps(CHAT),
        content_type="application/json",
        headers={"Authorization": f"Bearer {customer.raw_key}", **headers},
    )


def test_a_call_while_connections_are_refused_gets_a_503_to_retry(customer, caplog):
    client = Client(raise_request_exception=False)

    with caplog.at_level(logging.WARNING), refused_in_this_process() as pool:
        response = post_chat(client, customer)
        refusals = pool.get_stats().get("connections_errors", 0)

    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "service_unavailable")
    assert "ReqRun's database" in error["message"]
    assert 1 <= int(response["Retry-After"]) <= 10
    assert not Request.objects.exists()  # nothing half-recorded
    assert len(unavailable_warnings(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert refusals  # the refusal was met, not a pooled connection reused


def test_a_dashboard_page_while_connections_are_refused_is_the_503_page(customer, caplog):
    browser = Client(raise_request_exception=False)
    browser.force_login(customer.user)
    page = reverse("request-list", args=[customer.project.public_id])
    assert browser.get(page).status_code == 200

    with caplog.at_level(logging.WARNING), refused_in_this_process() as pool:
        response = browser.get(page)
        refusals = pool.get_stats().get("connections_errors", 0)

    assert response.status_code == 503
    assert 1 <= int(response["Retry-After"]) <= 10
    assert "briefly unavailable" in response.content.decode()
    assert refusals  # the refusal was met, not a pooled connection reused
    assert len(unavailable_warnings(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_readyz_names_postgres_while_connections_are_refused_and_healthz_stays_up(
    transactional_db,
):
    record_every_heartbeat()
    client = Client()
    assert client.get("/readyz").status_code == 200

    with refused_in_this_process():
        ready = client.get("/readyz")
        live = client.get("/healthz")

    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "down": ["postgres"]}
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert client.get("/readyz").status_code == 200  # ready again at once


def test_readyz_is_ready_at_once_when_connections_are_had_again(transactional_db, caplog):
    record_every_heartbeat()
    client = Client()

    with caplog.at_level(logging.WARNING), emptied_pool():
        with connections_exhausted(spare_own_session=False):
            refused = client.get("/readyz")  # the pool opens, is refused, and tries again
            # Past its third try (at about 3 s): psycopg_pool's own would wait 4 s more.
            time.sleep(1.5)
        ready = client.get("/readyz")  # the same pool; the probe waits 2 s for it

    assert refused.status_code == 503
    assert ready.status_code == 200, ready.json()
    # The pool tried several times, and warned of it once a minute at most.
    refusals = [r for r in caplog.records if r.getMessage().startswith("error connecting in")]
    assert len(refusals) <= 1, [r.getMessage() for r in refusals]


@pytest.mark.timeout(120)
def test_a_request_the_worker_could_not_open_a_connection_for_finishes_afterwards(
    tenant, worker, fake_upstream
):
    log_start = worker.log_path.stat().st_size
    with connections_exhausted():
        # Accepted on the test's own connection; the worker's were cut and it can open none.
        public_id = accept_request(
            api_key=tenant.api_key,
            endpoint="/v1/chat/completions",
            body=json.dumps(CHAT).encode(),
            payload=CHAT,
            idempotency_key=None,
        ).request.public_id
        # It waits for a connection for 3 s (the session worker's DB_POOL_TIMEOUT).
        wait_until(
            lambda: "OperationalError" in worker_log_since(worker, log_start),
            timeout=20,
            message="the worker never gave up waiting for a connection",
        )
    log = worker_log_since(worker, log_start)
    assert "request left for the sweeper: database unavailable" in log
    assert "raised unexpected" not in log  # not a task's failure, with its traceback
    assert Request.objects.get(public_id=public_id).status == "queued"

    # The sweeper publishes it again once its redispatch wait (10 s) has passed.
    Request.objects.filter(public_id=public_id).update(
        dispatched_at=timezone.now() - timedelta(seconds=30)
    )
    sweep()

    request = finished_request(public_id, message="the request never ran after the refusal")
    assert request.status == "succeeded"
    assert fake_upstream.count("/v1/chat/completions") == 1


def worker_log_since(worker, offset: int) -> str:
    with open(worker.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")
