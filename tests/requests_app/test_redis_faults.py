"""A Redis that answers but refuses what it is asked (out of memory under `noeviction`, a
read-only replica after a failover, a password ReqRun does not send) is answered as an
outage: a 503 in OpenAI's envelope with `Retry-After`, never a 500 of our own. Behind the
web, work accepted before the fault ends once, by the same worker, and the sweeper
publishes what fell due meanwhile at its first pass once Redis takes writes again."""

import json
import logging
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
import redis as redis_py
from django.conf import settings
from django.utils import timezone

from devstack.servers import EmbeddedRedis, free_port
from requests_app.engine.recovery import sweep
from requests_app.models import TERMINAL_STATUSES, Request
from tests.conftest import BeatProcess, ProcfileWeb, WorkerProcess, wait_until
from tests.factories import RequestFactory
from tests.requests_app.conftest import Tenant
from tests.requests_app.test_outages import Call, assert_unavailable, post_chat, waiting_callers

PASSWORD = "s3cret-never-logged"  # noqa: S105 - a test server's password
SWEEP_REFUSED = "sweep incomplete: Redis unavailable"
SLOT_REFUSED = "concurrency slot not taken: Redis unavailable"


@pytest.fixture
def customer(transactional_db, fake_upstream):
    fake_upstream.reset()
    return Tenant(email="alice@example.com", upstream_url=fake_upstream.base_url)


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own, so its faults reach no other test."""
    server = EmbeddedRedis(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


def out_of_memory(url: str) -> None:
    """Every write is refused with OOM, as a full Redis under `noeviction` answers."""
    admin = redis_py.Redis.from_url(url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    with pytest.raises(redis_py.exceptions.OutOfMemoryError):
        admin.set("reqrun:probe", "1")


def memory_freed(url: str) -> None:
    """The limit lifted, as an operator does: writes are taken again."""
    redis_py.Redis.from_url(url).config_set("maxmemory", "0")


def read_only_replica(tmp_path, primary: EmbeddedRedis) -> EmbeddedRedis:
    """A replica of `primary`: it answers reads and refuses every write with READONLY."""
    replica = EmbeddedRedis(tmp_path / "replica", free_port())
    replica.start()
    redis_py.Redis.from_url(replica.url).replicaof("127.0.0.1", primary.port)
    return replica


def fail_over(primary: EmbeddedRedis, *, to: EmbeddedRedis) -> None:
    """`to` (a replica of `primary`) is promoted and `primary` made its replica, as a failover
    does: whoever is still connected to `primary` finds every write refused with READONLY,
    and a BRPOP waiting there is ended with UNBLOCKED."""
    redis_py.Redis.from_url(to.url).replicaof("NO", "ONE")
    redis_py.Redis.from_url(primary.url).replicaof("127.0.0.1", to.port)


def promoted(server: EmbeddedRedis) -> None:
    """`server` takes writes again, with the data it holds."""
    redis_py.Redis.from_url(server.url).replicaof("NO", "ONE")


def get_request(url: str, customer: Tenant, request_id: str) -> httpx.Response:
    return httpx.get(
        f"{url}/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {customer.raw_key}"},
        timeout=60,
    )


def assert_no_error_of_ours(web: ProcfileWeb) -> str:
    log = web.log_path.read_text()
    assert "unhandled API error" not in log
    assert "Traceback" not in log
    assert PASSWORD not in log
    return log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefer", [{"Prefer": "respond-async"}, {}])
def test_calls_while_redis_is_out_of_memory_get_a_503_to_retry(
    customer, own_redis, tmp_path, prefer
):
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=own_redis.url).start()
    try:
        accepted = post_chat(web.url, customer, Prefer="respond-async")
        assert accepted.status_code == 202
        out_of_memory(own_redis.url)

        response = post_chat(web.url, customer, **prefer)
        reading = get_request(web.url, customer, accepted.json()["id"])
    finally:
        web.stop()

    assert_unavailable(response)
    assert reading.status_code in (200, 503), reading.text
    if reading.status_code == 503:
        assert_unavailable(reading)
    log = assert_no_error_of_ours(web)
    assert "dependency unavailable" in log


@pytest.mark.timeout(120)
def test_calls_to_a_read_only_replica_get_a_503_to_retry(customer, own_redis, tmp_path):
    replica = read_only_replica(tmp_path, own_redis)
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=replica.url).start()
    try:
        response = post_chat(web.url, customer, Prefer="respond-async")
    finally:
        web.stop()
        replica.stop()

    assert_unavailable(response)
    assert "dependency unavailable" in assert_no_error_of_ours(web)


@pytest.mark.timeout(120)
def test_calls_when_redis_wants_a_password_get_a_503_to_retry(customer, own_redis, tmp_path):
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=own_redis.url).start()
    try:
        assert post_chat(web.url, customer, Prefer="respond-async").status_code == 202
        redis_py.Redis.from_url(own_redis.url).config_set("requirepass", PASSWORD)
        # Connections already open stay signed in; a restart of the web or Redis drops them.
        wrong = ProcfileWeb(
            tmp_path / "wrong.log",
            REDIS_URL=f"redis://:not-{PASSWORD}@127.0.0.1:{own_redis.port}/0",
        ).start()
        try:
            wrong_password = post_chat(wrong.url, customer, Prefer="respond-async")
        finally:
            wrong.stop()
        none = ProcfileWeb(tmp_path / "none.log", REDIS_URL=own_redis.url).start()
        try:
            no_password = post_chat(none.url, customer, Prefer="respond-async")
        finally:
            none.stop()
    finally:
        web.stop()

    assert_unavailable(wrong_password)
    assert_unavailable(no_password)
    assert_no_error_of_ours(wrong)
    assert_no_error_of_ours(none)


def test_a_sweep_redis_refuses_is_a_warning_and_the_next_one_publishes(db, caplog):
    RequestFactory(status="retrying", next_attempt_at=timezone.now() - timedelta(seconds=1))
    out_of_memory(settings.REDIS_URL)  # the suite's own Redis, for this test only
    try:
        with caplog.at_level(logging.WARNING):
            refused = sweep()
    finally:
        memory_freed(settings.REDIS_URL)

    assert refused.dispatched == 0
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", SWEEP_REFUSED)]
    # The publish Redis refused is not taken for one made: no redispatch wait before the next.
    assert sweep().dispatched == 1


def processes_env(tmp_path, redis_url: str) -> dict[str, str]:
    """The environment of the processes a test deploys: the test's own Redis, and a temporary
    directory of their own, where nothing may appear (kombu would dump there the messages it
    could not put back on the queue)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"REDIS_URL": redis_url, "TMPDIR": str(tmp_path / "tmp")}


def assert_no_file_written(tmp_path) -> None:
    assert list((tmp_path / "tmp").iterdir()) == []


def assert_outage_logged_calmly(*logs, at_most: int = 8) -> None:
    """The outage is in each worker's log as warnings, none repeated more than `at_most`
    times: no error, nor Celery's critical 'Frequent restarts detected' each second."""
    for log in logs:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"]
        assert [line for line in lines if line["level"] in ("ERROR", "CRITICAL")] == []
        repeats = Counter(line["event"] for line in lines if line["level"] == "WARNING")
        assert max(repeats.values(), default=0) <= at_most, repeats.most_common(3)


@contextmanager
def deploy(tmp_path, redis_url: str, *, concurrency: int):
    """The Procfile's web, a worker and beat, all on `redis_url` (the test's own Redis)."""
    env = processes_env(tmp_path, redis_url)
    worker = WorkerProcess(concurrency=concurrency, extra_env=env, log_path=tmp_path / "worker.log")
    beat = BeatProcess(extra_env=env, log_path=tmp_path / "beat.log")
    web = ProcfileWeb(tmp_path / "web.log", **env)
    started = []
    try:
        for process in (worker, beat, web):  # worker and beat boot while the web does
            started.append(process.start())
        yield web, worker, beat
    finally:
        for process in started:
            process.stop()


def accept(url: str, customer: Tenant, model: str, content: str) -> str:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": content}]},
        headers={"Authorization": f"Bearer {customer.raw_key}", "Prefer": "respond-async"},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def waiting_for(web: ProcfileWeb, customer: Tenant, public_id: str) -> Call:
    """A caller waiting on `public_id`, registered with the web before what follows."""
    call = Call("GET", f"{web.url}/v1/requests/{public_id}?wait=30", customer)
    call.start()
    wait_until(lambda: waiting_callers(web) == 1, message="the caller never waited")
    return call


def retrying(public_id: str) -> Request:
    return wait_until(
        lambda: Request.objects.filter(public_id=public_id, status="retrying").first(),
        message="the first attempt never ended",
    )


def all_finished(public_ids: list[str]) -> dict[str, str]:
    """Each request's status, once none of them is left queued, running or retrying."""
    wait_until(
        lambda: (
            not Request.objects.filter(public_id__in=public_ids)
            .exclude(status__in=TERMINAL_STATUSES)
            .exists()
        ),
        timeout=40,
        interval=0.2,
        message="a request accepted before the fault never ended",
    )
    return dict(Request.objects.filter(public_id__in=public_ids).values_list("public_id", "status"))


def upstream_calls(fake_upstream) -> Counter:
    """How often the upstream was called for each request, by its prompt."""
    return Counter(call.body["messages"][0]["content"] for call in fake_upstream.requests)


def assert_succeeded(answer: httpx.Response) -> None:
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"


def assert_no_task_failed(*logs) -> None:
    """Neither a task nor a worker ended in an error of ours; beat's sweep never failed."""
    for log in logs:
        text = log.read_text()
        assert "raised unexpected" not in text  # a task's exception (celery.app.trace)
        assert "Unrecoverable error" not in text  # a worker's consumer giving up
        assert "task run by beat failed" not in text


@pytest.mark.timeout(120)
def test_work_accepted_before_redis_ran_out_of_memory_ends_once(
    customer, own_redis, fake_upstream, tmp_path
):
    with deploy(tmp_path, own_redis.url, concurrency=2) as (web, worker, beat):
        # Retry-After 3 s: too long for a worker to wait, so the sweeper publishes the retry.
        later = accept(web.url, customer, "script:503ra3,200", "later")
        retrying(later)  # its first attempt has ended: the retry is in the database
        running = [accept(web.url, customer, "sleep-2000", f"running-{n}") for n in (1, 2)]
        waiting = waiting_for(web, customer, running[0])
        queued = [accept(web.url, customer, "gpt-test", f"queued-{n}") for n in (1, 2)]

        out_of_memory(own_redis.url)
        answer = waiting.result()  # its attempt ended while Redis refused every write
        # The retry falls due, and a sweep is refused its publish, while Redis is full.
        wait_until(
            lambda: SWEEP_REFUSED in beat.log_path.read_text(),
            timeout=30,
            message="no sweep met the full Redis",
        )
        memory_freed(own_redis.url)
        after = accept(web.url, customer, "gpt-test", "after")

        statuses = all_finished([later, *running, *queued, after])
        assert worker.process.poll() is None  # the worker that consumed after is the same one

    assert_succeeded(answer)
    assert set(statuses.values()) == {"succeeded"}
    assert upstream_calls(fake_upstream) == Counter(
        {"later": 2, "running-1": 1, "running-2": 1, "queued-1": 1, "queued-2": 1, "after": 1}
    )
    assert_no_task_failed(worker.log_path, beat.log_path)
    assert_no_error_of_ours(web)
    assert_no_file_written(tmp_path)
    assert_outage_logged_calmly(worker.log_path)


@pytest.mark.timeout(120)
def test_work_accepted_before_a_redis_failover_ends_once(
    customer, own_redis, fake_upstream, tmp_path
):
    replica = read_only_replica(tmp_path, own_redis)
    late = WorkerProcess(
        concurrency=1,
        extra_env=processes_env(tmp_path, own_redis.url),
        log_path=tmp_path / "late.log",
    )
    try:
        with deploy(tmp_path, own_redis.url, concurrency=3) as (web, worker, beat):
            running = [accept(web.url, customer, "sleep-2000", f"running-{n}") for n in (1, 2)]
            waiting = waiting_for(web, customer, running[0])
            # A retry due 1.5 s after the first attempt, which its worker waits for itself.
            soon = accept(web.url, customer, "script:503ram1500,200", "soon")
            retrying(soon)  # its first attempt has ended: its worker waits for the retry
            queued = [accept(web.url, customer, "gpt-test", f"queued-{n}") for n in (1, 2)]

            fail_over(own_redis, to=replica)
            late.start()  # a worker (re)started while its Redis is read-only
            answer = waiting.result()  # its attempt ended while Redis refused every write
            wait_until(
                lambda: "ReadOnlyError" in late.log_path.read_text(),
                timeout=60,
                message="the late worker never met the read-only Redis",
            )
            # The retry's worker has tried to take a concurrency slot for it meanwhile.
            wait_until(
                lambda: SLOT_REFUSED in worker.log_path.read_text(),
                timeout=30,
                message="the retry never tried to take a slot from the read-only Redis",
            )
            promoted(own_redis)
            after = accept(web.url, customer, "gpt-test", "after")

            statuses = all_finished([*running, soon, *queued, after])
            assert worker.process.poll() is None  # neither worker ended, nor was restarted
            assert late.process.poll() is None
    finally:
        late.stop()
        replica.stop()

    assert_succeeded(answer)
    assert set(statuses.values()) == {"succeeded"}
    assert upstream_calls(fake_upstream) == Counter(
        {"running-1": 1, "running-2": 1, "soon": 2, "queued-1": 1, "queued-2": 1, "after": 1}
    )
    assert_no_task_failed(worker.log_path, late.log_path, beat.log_path)
    assert_no_error_of_ours(web)
    assert_no_file_written(tmp_path)
    assert_outage_logged_calmly(worker.log_path, late.log_path)
