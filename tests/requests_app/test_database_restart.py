"""PostgreSQL restarts: every connection a process holds in its pool dies at once. No caller
may get an error for it once the server is back, and no attempt's result may be lost."""

import threading
import time

import httpx
from django.db import connection

from requests_app.engine.recovery import sweep
from requests_app.models import Request
from tests.conftest import wait_until
from tests.outage import database_outage, drop_every_other_connection, finished_request
from tests.requests_app.test_faults import StreamReader

CHAT = [{"role": "user", "content": "restart"}]


def test_calls_after_the_servers_connections_dropped_all_succeed(sdk):
    for _ in range(4):  # the web's and the worker's pools now hold connections
        sdk.chat.completions.create(model="gpt-test", messages=CHAT)

    drop_every_other_connection()
    answers = [
        sdk.chat.completions.with_raw_response.create(model="gpt-test", messages=CHAT)
        for _ in range(6)
    ]

    assert [answer.http_response.status_code for answer in answers] == [200] * 6
    assert Request.objects.filter(status="succeeded").count() == 10


def test_an_attempt_in_flight_when_the_connections_dropped_is_concluded_once(
    tenant, live_api, fake_upstream
):
    response = None

    def call():
        nonlocal response
        response = httpx.post(
            f"{live_api.url}/v1/chat/completions",
            json={"model": "sleep-2000", "messages": CHAT},
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
            timeout=60,
        )

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: Request.objects.filter(status="running").exists())
    drop_every_other_connection()
    caller.join(60)

    assert response is not None and response.status_code == 200, response and response.text
    request = Request.objects.get()
    assert request.status == "succeeded"
    assert [a.outcome for a in request.attempts.all()] == ["success"]
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_an_attempt_that_ends_during_an_outage_is_recorded_once_the_database_is_back(
    tenant, live_api, worker, fake_upstream
):
    # The answer arrives while the database is down; the worker keeps it and records it
    # when the database answers again, rather than losing it (and running the call twice).
    log_start = worker.log_path.stat().st_size
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "sleep-1000", "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
    )
    wait_until(lambda: Request.objects.filter(status="running").exists())
    with database_outage(every_process=True):
        # Until the worker has waited out its pool (3 s) with the answer in hand, and kept it.
        wait_until(
            lambda: worker.logged_since(
                log_start, "attempt result kept and retried", response.json()["id"]
            ),
            timeout=30,
            message="the worker never kept the answer it could not record",
        )

    request = finished_request(
        response.json()["id"], message="the attempt's result was not recorded after the outage"
    )
    assert request.status == "succeeded"
    assert [a.outcome for a in request.attempts.all()] == ["success"]
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_a_stream_outlives_an_outage_with_its_lease_kept(tenant, live_api, fake_upstream):
    # The worker's watcher renews the stream's lease; an outage must not end that (after
    # which the sweeper would take the lease as lost and fail a healthy stream).
    body = {"model": "script:slowchunks2500", "messages": CHAT, "stream": True}
    reader = StreamReader(live_api, tenant, body)
    reader.start()
    wait_until(lambda: Request.objects.filter(first_byte_at__isnull=False).exists())

    with database_outage(every_process=True):
        time.sleep(5)  # the watcher's renewals meet an unreachable database
    time.sleep(7)  # longer than the lease (5 s attempt timeout + 1 s grace) lasts unrenewed
    sweep()
    reader.join(60)

    request = wait_until(
        lambda: Request.objects.filter(finished_at__isnull=False).first(),
        message="the stream's request never finished",
    )
    assert (request.status, request.partial) == ("succeeded", False), request.error
    assert reader.received.rstrip().endswith(b"data: [DONE]")


def test_a_relay_that_cannot_read_the_database_still_ends_the_stream_with_an_error_event(
    tenant, live_api
):
    # After 5 s of silence the relay reads the request; during an outage that read fails,
    # and the client must still get the error event that ends a broken stream.
    body = {"model": "script:stall2", "messages": CHAT, "stream": True}
    reader = StreamReader(live_api, tenant, body)
    pool = connection.pool
    waited, pool.timeout = pool.timeout, 2.0  # the web's wait for a connection, cut short
    try:
        reader.start()
        assert reader.first_chunk.wait(30)
        with database_outage(every_process=True):
            time.sleep(8)
        reader.join(60)
    finally:
        pool.timeout = waited

    assert b"event: error" in reader.received, reader.received[-300:]
    assert b"[DONE]" not in reader.received
