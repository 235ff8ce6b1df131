"""PostgreSQL refusing new connections (53300 `sorry, too many clients already`, or a role's
or database's CONNECTION LIMIT reached) while it still serves the ones already open: each
process meets it when its pool must open a connection. Callers get a 503 to retry within
about 2 s, not after DB_POOL_TIMEOUT, the dashboard the 503 page, /readyz says `postgres`;
an accepted request is not lost. A pool merely busy still keeps its callers waiting."""

import json
import logging
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from psycopg_pool import ConnectionPool

from core.postgresql.pool import ConnectionsRefused, connection_given_up
from requests_app.engine.accept import accept_request
from requests_app.engine.recovery import sweep
from requests_app.models import Request
from tests.conftest import WorkerProcess, record_every_heartbeat, wait_until
from tests.outage import connections_exhausted, finished_request
from tests.requests_app.conftest import Tenant

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "too many clients"}]}
# DB_POOL_TIMEOUT's default: how long a caller waits for a connection from a busy pool.
DB_POOL_TIMEOUT = 30.0
# Told apart from waiting the pool out: the refusal takes about 2 s, the timeout 30 s. Loose,
# so a slow machine does not make it flaky.
PROMPTLY = DB_POOL_TIMEOUT / 3


@contextmanager
def emptied_pool(*, timeout: float = 1.0):
    """This process's pool, emptied: its next query opens a connection, waiting `timeout`
    for one (DB_POOL_TIMEOUT, cut short unless told). Replaced by one as the settings make
    it on leaving."""
    connection.close()
    connection.close_pool()
    pool = connection.pool  # a new one, not opened yet
    pool.timeout = timeout
    try:
        yield pool
    finally:
        connection.close_pool()


@contextmanager
def refused_in_this_process(*, timeout: float = 1.0):
    """`connections_exhausted`, met by this process too. The test's own queries wait for
    the end of the block."""
    with emptied_pool(timeout=timeout) as pool, connections_exhausted(spare_own_session=False):
        yield pool


def timed(call):
    """What `call()` returns, and the seconds it took."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


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


def test_a_call_while_connections_are_refused_gets_a_503_to_retry_at_once(customer, caplog):
    client = Client(raise_request_exception=False)

    with (
        caplog.at_level(logging.WARNING),
        refused_in_this_process(timeout=DB_POOL_TIMEOUT) as pool,
    ):
        response, waited = timed(lambda: post_chat(client, customer))
        refusals = pool.get_stats().get("connections_errors", 0)

    assert response.status_code == 503, response.content
    assert waited < PROMPTLY, f"the call waited {waited:.1f} s for a connection"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "service_unavailable")
    assert "ReqRun's database" in error["message"]
    assert 1 <= int(response["Retry-After"]) <= 10
    assert not Request.objects.exists()  # nothing half-recorded
    assert len(unavailable_warnings(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert refusals  # the refusal was met, not a pooled connection reused


def test_a_dashboard_page_while_connections_are_refused_is_the_503_page_at_once(customer, caplog):
    browser = Client(raise_request_exception=False)
    browser.force_login(customer.user)
    page = reverse("request-list", args=[customer.project.public_id])
    assert browser.get(page).status_code == 200

    with caplog.at_level(logging.WARNING), emptied_pool(timeout=DB_POOL_TIMEOUT) as pool:
        with connections_exhausted(spare_own_session=False):
            response, waited = timed(lambda: browser.get(page))
            refusals = pool.get_stats().get("connections_errors", 0)
        back, back_in = timed(lambda: browser.get(page))  # the same pool, slots free again

    assert response.status_code == 503
    assert waited < PROMPTLY, f"the page waited {waited:.1f} s for a connection"
    assert back.status_code == 200
    assert back_in < PROMPTLY, f"the page took {back_in:.1f} s once connections were had again"
    assert 1 <= int(response["Retry-After"]) <= 10
    assert "briefly unavailable" in response.content.decode()
    assert refusals  # the refusal was met, not a pooled connection reused
    assert len(unavailable_warnings(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_page_waits_for_a_connection_from_a_pool_merely_busy(customer, caplog):
    browser = Client(raise_request_exception=False)
    browser.force_login(customer.user)
    page = reverse("request-list", args=[customer.project.public_id])

    with caplog.at_level(logging.WARNING), emptied_pool(timeout=DB_POOL_TIMEOUT) as pool:
        pool.resize(min_size=pool.min_size, max_size=pool.min_size)
        pool.open()
        held = [pool.getconn() for _ in range(pool.max_size)]  # healthy work holds them all
        # One handed back after longer than a refused connection now takes to answer 503.
        threading.Timer(2.5, pool.putconn, [held.pop()]).start()
        response, waited = timed(lambda: browser.get(page))
        for conn in held:
            pool.putconn(conn)

    assert response.status_code == 200
    assert waited >= 2.4  # it waited for the connection, and got it
    assert not unavailable_warnings(caplog)


def test_a_page_waiting_when_the_pool_gives_up_just_as_slots_free_is_served(customer, caplog):
    """The race a fail-fast pool must not lose: its last try to open a connection is
    refused, the database frees slots, and only then does the pool give up. A caller still
    waiting at that moment can be served, and is."""
    browser = Client(raise_request_exception=False)
    browser.force_login(customer.user)
    page = reverse("request-list", args=[customer.project.public_id])
    pool_log = logging.getLogger("psycopg.pool")
    freed = threading.Event()

    with ExitStack() as refusal, emptied_pool(timeout=DB_POOL_TIMEOUT):
        refusal.enter_context(connections_exhausted(spare_own_session=False))

        def free_slots_as_the_pool_gives_up(record: logging.LogRecord) -> bool:
            # psycopg_pool logs this after its last refused try, before its callback runs.
            if "failed after" in record.getMessage() and not freed.is_set():
                refusal.close()
                freed.set()
            return True

        pool_log.filters.insert(0, free_slots_as_the_pool_gives_up)  # before `repeats`
        try:
            response, waited = timed(lambda: browser.get(page))
        finally:
            pool_log.removeFilter(free_slots_as_the_pool_gives_up)

    assert freed.is_set()  # the pool did give up while the page waited
    assert response.status_code == 200, response.status_code
    assert waited < PROMPTLY, f"the page waited {waited:.1f} s for a connection"
    assert not unavailable_warnings(caplog)


def test_a_caller_who_came_after_the_pools_last_try_began_is_not_failed_by_it(db):
    """The pool gives up with a last try; a caller who starts waiting while that try is under
    way (as the database frees slots) did not wait through the refusals: the try's failure
    fails those who did, and the newcomer gets a round of tries of its own, and a connection.

    The refusal comes from the pool's `configure` hook, which runs inside each of its tries
    to open a connection: it holds the last try until the newcomer waits."""
    refusing, last_try, in_last_try, newcomer_waits = (threading.Event() for _ in range(4))
    refusing.set()

    def refuse_while_told(conn) -> None:
        if not refusing.is_set():
            return
        if last_try.is_set() and not in_last_try.is_set():
            in_last_try.set()
            newcomer_waits.wait(10)
            refusing.clear()  # the database takes connections from now on
        conn.close()
        raise psycopg.OperationalError("sorry, too many clients already")

    def given_up(pool: ConnectionPool) -> None:
        last_try.set()
        connection_given_up(pool)

    pool = ConnectionPool(
        kwargs=connection.get_connection_params(),
        min_size=0,
        max_size=2,
        timeout=10,
        reconnect_timeout=0.5,
        reconnect_failed=given_up,
        configure=refuse_while_told,
        open=True,
    )
    got: dict[str, object] = {}

    def wait_for_a_connection(who: str) -> None:
        try:
            got[who] = pool.getconn()
        except Exception as error:  # noqa: BLE001 - what each caller got is the outcome
            got[who] = error

    first = threading.Thread(target=wait_for_a_connection, args=("first",))
    newcomer = threading.Thread(target=wait_for_a_connection, args=("newcomer",))
    try:
        first.start()
        assert in_last_try.wait(10)
        newcomer.start()
        wait_until(lambda: len(pool._waiting) == 2)  # psycopg_pool's queue of callers
        newcomer_waits.set()
        first.join(15)
        newcomer.join(15)
    finally:
        pool.close()

    assert isinstance(got["first"], ConnectionsRefused), got["first"]
    assert isinstance(got["newcomer"], psycopg.Connection), got["newcomer"]


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
        public_id = accepted_on_own_connection(tenant)
        # Its pool gives up opening a connection after 2 s, and tells the task so.
        wait_until(
            lambda: "request left for the sweeper" in worker.log_since(log_start),
            timeout=20,
            message="the worker never gave up waiting for a connection",
        )
    log = worker.log_since(log_start)
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


def accepted_on_own_connection(tenant) -> str:
    """A chat request accepted on the test's own session (left open by
    `connections_exhausted`); its public id."""
    return accept_request(
        api_key=tenant.api_key,
        endpoint="/v1/chat/completions",
        body=json.dumps(CHAT).encode(),
        payload=CHAT,
        idempotency_key=None,
    ).request.public_id


@pytest.mark.timeout(120)
def test_a_worker_waits_out_the_refusal_and_runs_the_request_once_slots_free(
    tenant, worker, fake_upstream, tmp_path
):
    """Nobody waits on a worker's thread for an answer: rather than hand the request to the
    sweeper (a redispatch wait of 10 s and more) it holds on for DB_POOL_TIMEOUT while its
    pool keeps trying, and runs the request as soon as a connection opens."""
    worker.stop()  # the suite's worker waits 3 s for a connection; this one as deployed
    patient = WorkerProcess(log_path=tmp_path / "worker.log").start()
    try:
        wait_until(
            lambda: "watchdog started" in patient.log_path.read_text(errors="replace"),
            timeout=60,
            message="the worker never started consuming",
        )
        with connections_exhausted():
            public_id = accepted_on_own_connection(tenant)
            wait_until(
                lambda: "reconnection attempt in pool" in patient.log_path.read_text(),
                timeout=20,
                message="the worker's pool never gave up a connection",
            )
            time.sleep(2)  # and a second round of tries
        # No sweep: the worker that took the message runs it.
        request = finished_request(public_id, message="the worker did not run it once back")
    finally:
        patient.stop()
        worker.start()

    assert request.status == "succeeded"
    assert fake_upstream.count("/v1/chat/completions") == 1
    log = patient.log_path.read_text()
    assert "request left for the sweeper" not in log
    assert "dependency unavailable" not in log
