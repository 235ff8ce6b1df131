"""No accepted request is lost: worker SIGKILL mid-attempt, a broker that forgot its tasks."""

import logging
import os
import signal
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from cryptography.fernet import Fernet
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from core import encryption, heartbeats
from requests_app import tasks
from requests_app.engine import concurrency
from requests_app.engine.dispatch import oldest_waiting_request, publish_execute_request
from requests_app.engine.recovery import sweep
from requests_app.engine.redis_client import client
from requests_app.engine.streams import StreamPublisher
from requests_app.models import Request
from tests.conftest import BeatProcess, ProcfileWeb, WorkerProcess, wait_until
from tests.factories import AttemptFactory, RequestFactory
from tests.requests_app.conftest import Tenant
from tests.requests_app.test_failover import queued_request
from tests.tcp_proxy import FreezingProxy

CHAT = [{"role": "user", "content": "durable"}]
QUEUE = "requests"  # where execute_request goes (CELERY_TASK_ROUTES)


def async_post(live_api, tenant, model: str) -> str:
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": model, "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
    )
    assert response.status_code == 202
    return response.json()["id"]


def finished(public_id: str) -> Request | None:
    sweep()
    request = Request.objects.get(public_id=public_id)
    return request if request.is_terminal else None


def test_a_worker_killed_mid_attempt_is_recovered_by_the_sweeper(
    tenant, live_api, worker, fake_upstream
):
    tenant.project.attempt_timeout_seconds = 3  # lease: 3 s + 1 s grace in the test worker
    tenant.project.save()
    public_id = async_post(live_api, tenant, "script:hang,200")
    wait_until(
        lambda: fake_upstream.count("/v1/chat/completions") == 1,
        message="the attempt never reached the upstream",
    )

    worker.kill()
    worker.start()
    request = wait_until(
        lambda: finished(public_id),
        timeout=60,
        message="the request never finished after the worker died",
    )

    assert request.status == "succeeded"
    assert [(a.outcome, a.error_code) for a in request.attempts.all()] == [
        ("connection_error", "worker_lost"),
        ("success", None),
    ]
    # The one duplicate upstream execution is the attempt that was in flight at the kill.
    assert fake_upstream.count("/v1/chat/completions") == 2


def test_a_worker_that_outlives_its_lease_cannot_overwrite_the_recovery(
    tenant, live_api, worker, fake_upstream
):
    log_start = worker.log_path.stat().st_size
    public_id = async_post(live_api, tenant, "script:sleep2000,200")
    wait_until(
        lambda: fake_upstream.count("/v1/chat/completions") == 1,
        message="the attempt never reached the upstream",
    )
    # The worker is alive but slow: its lease runs out while the upstream still works, and
    # the sweeper closes the attempt and schedules a retry before the worker comes back.
    Request.objects.filter(public_id=public_id).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    sweep()

    request = wait_until(
        lambda: finished(public_id),
        timeout=60,
        message="the request never finished after its lease was recovered",
    )
    # The slow worker is back with its answer two seconds later, and its write is refused.
    wait_until(
        lambda: worker.logged_since(log_start, "attempt outlived its lease", public_id),
        timeout=30,
        message="the slow worker's late answer never came back",
    )
    request.refresh_from_db()

    assert request.status == "succeeded"
    assert [(a.number, a.outcome, a.error_code) for a in request.attempts.order_by("number")] == [
        (1, "connection_error", "worker_lost"),  # the late answer did not overwrite this
        (2, "success", None),
    ]
    assert request.attempt_count == 2
    assert fake_upstream.count("/v1/chat/completions") == 2


COMPLETE_STREAM = (
    b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n',
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, '
    b'"total_tokens": 4}}\n\n',
    b"data: [DONE]\n\n",
)
REPORTED_ERROR_STREAM = (
    COMPLETE_STREAM[0],
    b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n',
    b"data: [DONE]\n\n",
)


def seconds_ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def lost_request(*, lease_ran_out: float, **fields) -> Request:
    """A request whose worker was lost in its first attempt: `running`, its attempt's row
    open, its lease run out `lease_ran_out` seconds ago (the sweeper takes the oldest first)."""
    request = RequestFactory(
        status="running", attempt_count=1, lease_until=seconds_ago(lease_ran_out), **fields
    )
    AttemptFactory(request=request, number=1, outcome="", status_code=None, upstream="primary")
    return request


@pytest.mark.parametrize(
    ("relayed", "outcome"),
    [
        (COMPLETE_STREAM, ("succeeded", False, "success")),  # killed just before recording
        (COMPLETE_STREAM[:1], ("failed", True, "connection_error")),  # killed mid-stream
        # The upstream said inside its stream that the answer failed: as the worker records it.
        (REPORTED_ERROR_STREAM, ("failed", True, "fatal_error")),
    ],
    ids=["whole", "cut", "reported-error"],
)
def test_a_lost_stream_is_recorded_as_what_its_readers_got(db, relayed, outcome):
    # A worker killed after relaying the upstream's whole answer, before recording it: the
    # callers have the complete answer, so the record must not call it failed and partial.
    request = lost_request(lease_ran_out=1, stream=True, first_byte_at=seconds_ago(5))
    publisher = StreamPublisher(request.public_id, 1)
    publisher.start(200, {"content-type": "text/event-stream", "x-request-id": "req_up"})
    for chunk in relayed:
        publisher.chunk(chunk)

    sweep()

    request.refresh_from_db()
    attempt = request.attempts.get()
    assert (request.status, request.partial, attempt.outcome) == outcome
    assert encryption.decrypt(request.response_body) == b"".join(relayed)
    if outcome[0] == "succeeded":
        assert request.usage["total_tokens"] == 4
        assert request.response_headers["x-request-id"] == "req_up"


def test_a_lost_stream_whose_relayed_bytes_no_key_opens_fails_partial(db, caplog):
    # The bytes a lost stream relayed were encrypted under a key the operator has since
    # removed from the ring, so the sweeper cannot read back what its readers got.
    sealed = lost_request(lease_ran_out=2, stream=True, first_byte_at=seconds_ago(5))
    publisher = StreamPublisher(sealed.public_id, 1)
    publisher.start(200, {"content-type": "text/event-stream"})
    publisher.send("chunk", data=Fernet(Fernet.generate_key()).encrypt(COMPLETE_STREAM[0]))
    # Another worker lost at the same time, whose recovery comes after it.
    lost = lost_request(lease_ran_out=1)

    with caplog.at_level(logging.WARNING):
        report = sweep()

    sealed.refresh_from_db()
    lost.refresh_from_db()
    # Never retried after its first byte, and not left running: the lost worker's stream
    # broke off, with no copy of what no key here opens.
    assert (sealed.status, sealed.partial) == ("failed", True)
    assert sealed.error["code"] == "worker_lost"
    assert sealed.response_body is None
    assert lost.status == "retrying"
    assert report.recovered == 2
    # The operator's warning names the request and the key ring's trouble, not a bug of ours.
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    unreadable = [r for r in caplog.records if r.getMessage() == "stored value cannot be decrypted"]
    assert [(r.request_id, r.stored) for r in unreadable] == [(sealed.public_id, "stream")]
    assert "gAAAAA" not in caplog.text


def test_a_lost_attempt_whose_recovery_fails_stops_neither_itself_nor_the_sweep(
    transactional_db, caplog
):
    # The database refuses the lost attempt's own record for this request (a constraint
    # against `worker_lost`), but not our own error.
    sealed = lost_request(lease_ran_out=2, stream=True, first_byte_at=seconds_ago(5))
    lost = lost_request(lease_ran_out=1)
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE requests_app_attempt ADD CONSTRAINT sealed_attempt_not_lost "
            f"CHECK (request_id <> {sealed.pk} OR error_code <> 'worker_lost') NOT VALID"
        )
    try:
        with caplog.at_level(logging.ERROR):
            report = sweep()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE requests_app_attempt DROP CONSTRAINT sealed_attempt_not_lost"
            )

    sealed.refresh_from_db()
    lost.refresh_from_db()
    # Never retried after its first byte, and not left running: our own error, partial.
    assert (sealed.status, sealed.partial) == ("failed", True)
    assert sealed.error["code"] == "internal_error"
    assert lost.status == "retrying"
    assert report.recovered == 2
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [(record.getMessage(), record.request_id) for record in errors] == [
        ("attempt result not recorded", sealed.public_id)
    ]


@contextmanager
def outcomes_refused(request: Request):
    """The database refuses every outcome of `request`'s attempts (a constraint it keeps),
    so neither an attempt's result nor our own error can be written for it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE requests_app_attempt ADD CONSTRAINT stuck_attempt_stays_open "
            f"CHECK (request_id <> {request.pk} OR outcome = '') NOT VALID"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE requests_app_attempt DROP CONSTRAINT stuck_attempt_stays_open"
            )


def test_a_lost_attempt_that_cannot_be_recorded_at_all_does_not_stop_the_sweep(
    transactional_db, caplog
):
    # Neither the lost attempt's result nor our own error can be written for this request
    # (a constraint the database keeps refuses both): it is logged and tried again by the
    # next sweep, and the requests after it are still recovered.
    stuck = lost_request(lease_ran_out=2)
    lost = lost_request(lease_ran_out=1)
    with outcomes_refused(stuck), caplog.at_level(logging.ERROR):
        report = sweep()

    stuck.refresh_from_db()
    lost.refresh_from_db()
    assert (stuck.status, lost.status) == ("running", "retrying")
    assert report.recovered == 1
    errors = [(record.getMessage(), record.request_id) for record in caplog.records]
    assert ("lost attempt not recorded", stuck.public_id) in errors


def test_an_attempt_whose_own_error_is_refused_too_is_left_for_the_sweeper(
    transactional_db, fake_upstream, caplog
):
    # The upstream answered, but neither its answer nor our own error can be written for
    # this request: the worker's task logs it and leaves the request to the sweeper, as a
    # lost worker's (not a failed task with a traceback). Its concurrency slot and the
    # breaker's probe it held are handed back.
    fake_upstream.reset()
    tenant = Tenant(email="refused@example.com", upstream_url=fake_upstream.base_url)
    tenant.project.upstreams.update(breaker_open_until=seconds_ago(1))  # this one probes
    request = queued_request(tenant, "gpt-test")

    with outcomes_refused(request), caplog.at_level(logging.ERROR):
        tasks.execute_request(request.pk)

    assert fake_upstream.count("/v1/chat/completions") == 1
    errors = [
        (record.getMessage(), record.request_id, record.exception)
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]
    assert errors == [
        ("attempt result not recorded", request.public_id, "IntegrityError"),
        ("attempt not recorded; left for the sweeper", request.public_id, "IntegrityError"),
    ]
    request.refresh_from_db()
    assert (request.status, request.attempt_count) == ("running", 1)
    assert request.attempts.get().outcome == ""  # still open: nothing half-written
    assert concurrency.in_use(tenant.account.pk) == 0
    assert tenant.project.upstreams.get().breaker_probe_until is None

    Request.objects.filter(pk=request.pk).update(lease_until=seconds_ago(1))
    assert sweep().recovered == 1
    request.refresh_from_db()
    assert request.status == "retrying"
    assert request.attempts.get().error_code == "worker_lost"


def test_a_task_lost_by_the_broker_is_dispatched_again(tenant, live_api, worker):
    worker.stop()
    public_id = async_post(live_api, tenant, "gpt-test")
    cache._cache.get_client().flushdb()  # the broker forgets the queued task, as a restart would
    worker.start()
    Request.objects.filter(public_id=public_id).update(
        dispatched_at=timezone.now() - timedelta(minutes=5)
    )

    request = wait_until(
        lambda: finished(public_id), timeout=60, message="the lost request was never run"
    )
    assert request.status == "succeeded"
    assert request.attempts.count() == 1


def test_no_prompt_or_key_reaches_any_log(tenant, live_api, worker, caplog):
    sentinel = f"SENTINEL-{uuid.uuid4()}"
    caplog.set_level(logging.DEBUG)
    worker_log_start = worker.log_path.stat().st_size
    for model in ("gpt-test", "script:503,200", "script:400"):
        httpx.post(
            f"{live_api.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": sentinel}]},
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
            timeout=60,
        )
    httpx.post(
        f"{live_api.url}/v1/chat/completions",
        content=sentinel.encode(),
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    web_text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    with open(worker.log_path, "rb") as log:
        log.seek(worker_log_start)
        worker_text = log.read().decode(errors="replace")
    assert "attempt finished" in worker_text  # the worker did log, just not the payload
    for secret in (sentinel, tenant.raw_key, "sk-test-provider-key-1234"):
        assert secret not in web_text
        assert secret not in worker_text


def test_an_upstream_error_passed_on_is_not_logged_as_reqruns_own(tenant, live_api, caplog):
    """django.request logs a 5xx answer as an error; the upstream's 501 passed on under /v1
    is an answer, logged with its request and attempt, not a fault of ReqRun's."""
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "script:501", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=60,
    )

    assert response.status_code == 501
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]


def test_unclaimed_work_is_published_again_within_seconds_and_then_less_often(db):
    request = RequestFactory()
    now = timezone.now()
    Request.objects.filter(pk=request.pk).update(
        created_at=now - timedelta(seconds=20), dispatched_at=now - timedelta(seconds=15)
    )

    assert sweep().dispatched == 1  # unclaimed for 15 s: its message may be lost
    assert sweep().dispatched == 0  # just published: it waits before the next publish
    client().delete(QUEUE)  # a worker took that message too, and was lost with it
    Request.objects.filter(pk=request.pk).update(
        created_at=timezone.now() - timedelta(seconds=40),
        dispatched_at=timezone.now() - timedelta(seconds=15),
    )
    assert sweep().dispatched == 0  # had waited 25 s before that publish: waits 25 s now
    Request.objects.filter(pk=request.pk).update(
        dispatched_at=timezone.now() - timedelta(seconds=30)
    )
    assert sweep().dispatched == 1


def backlog_published(seconds_ago: int, count: int) -> list[Request]:
    """Requests whose messages still wait in the broker's queue (no worker is taking them),
    published `seconds_ago`, oldest first."""
    waiting = RequestFactory.create_batch(count)
    for request in waiting:
        publish_execute_request(request.pk)
    now = timezone.now()
    Request.objects.filter(pk__in=[r.pk for r in waiting]).update(
        created_at=now - timedelta(seconds=seconds_ago + 1),
        dispatched_at=now - timedelta(seconds=seconds_ago),
    )
    return waiting


def test_work_waiting_behind_a_busy_pool_is_not_published_again(db):
    backlog_published(seconds_ago=15, count=3)  # longer than the sweep's patience

    assert sweep().dispatched == 0  # their messages are still in the queue
    assert client().llen(QUEUE) == 3


def test_a_message_lost_before_the_oldest_waiting_one_is_published_again(db):
    [lost] = backlog_published(seconds_ago=30, count=1)
    client().delete(QUEUE)  # a worker took it and died before claiming it
    backlog_published(seconds_ago=15, count=2)

    assert sweep().dispatched == 1
    assert Request.objects.get(pk=lost.pk).dispatched_at > timezone.now() - timedelta(seconds=5)
    assert client().llen(QUEUE) == 3


def test_a_sweep_publishes_its_due_retries_together_earliest_first(db):
    client().delete(QUEUE)
    now = timezone.now()
    due = [
        RequestFactory(status="retrying", next_attempt_at=now - timedelta(seconds=seconds))
        for seconds in (5, 30, 15)  # due 5, 30 and 15 s ago
    ]
    pushes_before = client().info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)

    assert sweep().dispatched == 3

    assert client().info("commandstats")["cmdstat_lpush"]["calls"] == pushes_before + 1
    # Workers take from the tail: the one due longest goes first.
    assert oldest_waiting_request() == due[1].pk
    client().rpop(QUEUE)
    assert oldest_waiting_request() == due[2].pk


@pytest.mark.timeout(120)
def test_the_sweep_runs_while_every_worker_thread_is_busy(tenant, live_api, worker, fake_upstream):
    tenant.project.attempt_timeout_seconds = 90  # the call holds the thread for the whole test
    tenant.project.save()
    worker.stop()  # only a one-thread worker and beat, as on a saturated deploy
    busy = WorkerProcess(concurrency=1).start()
    beat = BeatProcess().start()
    try:
        async_post(live_api, tenant, "script:hang")
        wait_until(
            lambda: fake_upstream.count("/v1/chat/completions") == 1,
            timeout=60,
            message="the one worker thread never took the hanging call",
        )
        cache.delete(heartbeats.key(heartbeats.SWEEPER))

        wait_until(
            lambda: cache.get(heartbeats.key(heartbeats.SWEEPER)),
            timeout=30,
            interval=0.5,
            message="no sweep ran while the worker's only thread was busy",
        )
    finally:
        beat.stop()
        busy.kill()  # its one thread hangs for 90 s: a warm shutdown would wait out its grace
        busy.stop()
        worker.start()


@pytest.mark.timeout(120)
def test_a_stopping_worker_finishes_its_attempts_and_starts_no_new_one(tenant, live_api, worker):
    worker.stop()
    stopping = WorkerProcess(concurrency=2, extra_env={"REQRUN_WORKER_GRACE_SECONDS": "30"})
    stopping.start()
    try:
        in_flight = async_post(live_api, tenant, "sleep-3000")
        retrying = async_post(live_api, tenant, "script:503ram1500,200")
        wait_until(
            lambda: Request.objects.filter(public_id=retrying, status="retrying").exists(),
            timeout=60,
            message="the first attempt never ended",
        )
        os.killpg(stopping.process.pid, signal.SIGTERM)  # during the 1.5 s before attempt 2
        assert stopping.process.wait(timeout=30) == 0

        assert Request.objects.get(public_id=in_flight).status == "succeeded"  # finished
        assert Request.objects.get(public_id=retrying).attempt_count == 1  # none started
    finally:
        stopping.stop()
        worker.start()
    request = wait_until(lambda: finished(retrying), timeout=60, message="never resumed")
    assert request.status == "succeeded"
    assert request.attempt_count == 2


@pytest.mark.timeout(120)
def test_a_stopping_worker_leaves_a_long_attempt_to_its_lease_after_the_grace(
    tenant, live_api, worker, fake_upstream
):
    tenant.project.attempt_timeout_seconds = 60
    tenant.project.save()
    worker.stop()
    stopping = WorkerProcess(concurrency=2, extra_env={"REQRUN_WORKER_GRACE_SECONDS": "2"})
    stopping.start()
    try:
        async_post(live_api, tenant, "script:hang")
        wait_until(
            lambda: fake_upstream.count("/v1/chat/completions") == 1,
            timeout=60,
            message="the attempt never reached the upstream",
        )
        started = time.monotonic()
        os.killpg(stopping.process.pid, signal.SIGTERM)
        stopping.process.wait(timeout=30)

        assert time.monotonic() - started < 15  # the grace, not the 60 s attempt
    finally:
        stopping.stop()
        worker.start()


@pytest.mark.timeout(240)
def test_a_publish_that_fails_after_commit_is_not_an_error_and_the_sweeper_runs_it(
    tenant, worker, tmp_path
):
    redis_port = int(os.environ["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    broker = FreezingProxy(redis_port, marker=b"LPUSH")  # publishing hangs, all else works
    broker.frozen.set()
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=f"redis://127.0.0.1:{broker.port}/0")
    try:
        web.start()
        response = httpx.post(
            f"{web.url}/v1/chat/completions",
            json={"model": "gpt-test", "messages": CHAT},
            headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
            timeout=180,
        )
    finally:
        web.stop()
        broker.close()

    assert response.status_code == 202  # accepted: it is in PostgreSQL, whatever the broker did
    public_id = response.json()["id"]
    Request.objects.filter(public_id=public_id).update(
        dispatched_at=timezone.now() - timedelta(minutes=1)
    )
    request = wait_until(lambda: finished(public_id), timeout=60, message="never dispatched")
    assert request.status == "succeeded"
