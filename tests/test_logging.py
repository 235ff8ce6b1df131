"""Structured logs: JSON lines with fixed metadata fields, from the web and the worker alike."""

import io
import json
import logging
import os
import uuid

import httpx
import pytest
import redis

from core import encryption
from core.logs import BoundFields, ConsoleFormatter, JsonFormatter, bind
from privacy.services import ExportCut
from requests_app.models import Request
from requests_app.tasks import execute_request
from tests.conftest import ProcfileWeb, WorkerProcess, separate_redis_db, wait_until
from tests.factories import RequestFactory
from tests.fake_upstream import FakeUpstream
from tests.requests_app.conftest import Tenant

FIXED = ("time", "level", "logger", "event")
QUEUE = "logging-json"
SECRET = "".join(["SENTI", "NEL"])  # only the JSON worker of these tests consumes it


def emit(formatter: logging.Formatter, message: str, **extra) -> str:
    """Log one record through a handler like the one LOGGING builds; return what it wrote."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(BoundFields())
    logger = logging.getLogger(f"tests.logging.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.info(message, extra=extra)
    return stream.getvalue()


def test_json_line_has_the_fixed_fields_under_one_name_each_and_nothing_else():
    line = emit(
        JsonFormatter(),
        "attempt finished",
        request_id="req_abc",
        attempt=2,
        status_code=503,
        latency_ms=41,
        project_id="prj_x",
        account_id="acc_y",
        outcome="http_error",
        body="SENTINEL-body",  # not on the allow-list
        endpoint={"prompt": "SENTINEL-dict"},  # on it, but not a plain value
    )

    assert line.endswith("\n") and line.count("\n") == 1
    fields = json.loads(line)
    assert list(fields)[:4] == list(FIXED)
    assert fields["level"] == "INFO" and fields["event"] == "attempt finished"
    assert fields["time"].endswith("Z")
    assert {k: fields[k] for k in list(fields)[4:]} == {
        "request_id": "req_abc",
        "attempt": 2,
        "project": "prj_x",
        "account": "acc_y",
        "status": 503,
        "latency_ms": 41,
        "outcome": "http_error",
    }
    assert "SENTINEL" not in line


def test_an_outage_line_says_which_error_the_database_gave():
    fields = json.loads(
        emit(
            JsonFormatter(),
            "dependency unavailable",
            exception="OperationalError",
            sqlstate="57014",
        )
    )

    assert (fields["exception"], fields["sqlstate"]) == ("OperationalError", "57014")


def test_console_line_shows_the_fields_after_the_message():
    line = emit(
        ConsoleFormatter(),
        "request accepted",
        request_id="req_abc",
        project_id="prj_x",
        error="connection refused",
        payload="SENTINEL",
    )

    assert line.rstrip().endswith(
        'request accepted request_id=req_abc project=prj_x error="connection refused"'
    )
    assert "SENTINEL" not in line


def test_bound_fields_reach_every_line_inside_the_binding_and_no_line_after():
    with bind(request_id="req_bound", project="prj_b"):
        inside = json.loads(emit(JsonFormatter(), "inside", attempt=1))
        own = json.loads(emit(JsonFormatter(), "own wins", request_id="req_own"))
    after = json.loads(emit(JsonFormatter(), "after"))

    assert (inside["request_id"], inside["project"], inside["attempt"]) == ("req_bound", "prj_b", 1)
    assert own["request_id"] == "req_own"
    assert "request_id" not in after and "project" not in after


class JsonWorker(WorkerProcess):
    """A worker logging JSON, alone on its own queue (a shared test worker may be running)."""

    def __init__(self):
        super().__init__(concurrency=2, extra_env={"LOG_FORMAT": "json"})
        self.log_path = self.log_path.with_name(f"test-json-worker-{os.getpid()}.log")

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("-Q") + 1] = QUEUE
        return command


def log_lines(path, start: int = 0) -> list[str]:
    """The complete lines written since `start`."""
    text = path.read_bytes()[start:].decode(errors="replace")
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


def parsed(lines: list[str]) -> list[dict]:
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    return records


@pytest.mark.worker
@pytest.mark.timeout(120)
def test_worker_logs_one_json_object_per_line_with_the_request_and_never_the_prompt(
    transactional_db,
):
    sentinel = f"SENTINEL-{uuid.uuid4()}"
    with FakeUpstream() as upstream:
        tenant = Tenant(email="json@example.com", upstream_url=upstream.base_url)
        chat = [{"role": "user", "content": sentinel}]
        body = json.dumps({"model": "gpt-test", "messages": chat})
        request = RequestFactory(
            project=tenant.project,
            api_key=tenant.api_key,
            request_body=encryption.encrypt(body.encode()),
        )
        worker = JsonWorker()
        start = worker.log_path.stat().st_size if worker.log_path.exists() else 0
        worker.start()
        try:
            execute_request.apply_async(args=[request.pk], queue=QUEUE)
            wait_until(
                lambda: any(
                    '"request finished"' in line for line in log_lines(worker.log_path, start)
                ),
                timeout=60,
                message="the JSON worker never finished the request",
            )
            wait_until(
                lambda: any(
                    '"start-up objects frozen"' in line
                    for line in log_lines(worker.log_path, start)
                ),
                timeout=30,
                message="the worker never settled its garbage collector",
            )
            # Read before stopping: Celery prints its own shutdown notice as plain text.
            lines = log_lines(worker.log_path, start)
        finally:
            worker.stop()

    assert Request.objects.get(pk=request.pk).status == "succeeded"
    records = parsed(lines)
    assert all(set(FIXED) <= set(record) for record in records)
    [finished] = [r for r in records if r["event"] == "attempt finished"]
    assert finished["request_id"] == request.public_id
    assert finished["project"] == tenant.project.public_id
    assert finished["account"] == tenant.account.public_id
    assert finished["upstream"] == "primary"
    assert finished["attempt"] == 1 and finished["status"] == 200
    assert isinstance(finished["latency_ms"], int)
    # Bound from the task's arguments by the worker, not passed by the engine.
    assert finished["request_pk"] == request.pk
    assert finished["task"] == "requests_app.tasks.execute_request"
    [frozen] = [r for r in records if r["event"] == "start-up objects frozen"]
    assert frozen["count"] > 10_000
    [started] = [r for r in records if r["event"] == "worker started"]
    assert started["queues"] == QUEUE and "requests_app.tasks.execute_request" in started["tasks"]
    for secret in (sentinel, tenant.raw_key, "sk-test-provider-key-1234"):
        assert all(secret not in line for line in lines)


@pytest.mark.timeout(120)
def test_web_logs_json_lines_without_the_access_log_unless_asked(transactional_db, tmp_path):
    sentinel = f"SENTINEL-{uuid.uuid4()}"
    # The accepted request's task goes where no worker runs it: this test reads logs only.
    env = {"REDIS_URL": separate_redis_db(7), "LOG_FORMAT": "json"}
    with FakeUpstream() as upstream:
        tenant = Tenant(email="web@example.com", upstream_url=upstream.base_url)
        quiet = ProcfileWeb(tmp_path / "quiet.log", **env).start()
        chatty = ProcfileWeb(tmp_path / "chatty.log", ACCESS_LOG="true", **env)
        chatty.start()
        try:
            answer = httpx.post(
                f"{quiet.url}/v1/chat/completions",
                json={"model": "gpt-test", "messages": [{"role": "user", "content": sentinel}]},
                headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
            )
            assert answer.status_code == 202
        finally:
            quiet.stop()
            chatty.stop()
            redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    quiet_lines, chatty_lines = log_lines(quiet.log_path), log_lines(chatty.log_path)

    quiet_records, chatty_records = parsed(quiet_lines), parsed(chatty_lines)
    assert all(set(FIXED) <= set(record) for record in quiet_records + chatty_records)
    [accepted] = [r for r in quiet_records if r["event"] == "request accepted"]
    assert accepted["request_id"] == answer.json()["id"]
    assert accepted["project"] == tenant.project.public_id
    [frozen] = [r for r in quiet_records if r["event"] == "start-up objects frozen"]
    assert frozen["count"] > 10_000
    assert not [r for r in quiet_records if r["logger"] == "uvicorn.access"]
    # uvicorn's own lines come through the same formatter.
    assert any(r["logger"].startswith("uvicorn") for r in quiet_records)
    assert [r for r in chatty_records if r["logger"] == "uvicorn.access"]
    for secret in (sentinel, tenant.raw_key):
        assert all(secret not in line for line in quiet_lines + chatty_lines)


@pytest.mark.parametrize("formatter", [JsonFormatter(), ConsoleFormatter()])
def test_a_traceback_names_the_exceptions_and_where_but_never_their_text(formatter):
    """An exception's message can quote what it failed on: a body, a key, a row's values."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"tests.logging.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False

    def parse(body: str) -> dict:
        return json.loads(body)

    # Built at run time: a traceback's source lines are code, and must show.
    body, key = '{"prompt": "' + SECRET + '-prompt"', f"{SECRET}-key sk-live"
    try:
        try:
            parse(body)
        except ValueError as error:
            raise KeyError(key) from error
    except KeyError:
        logger.exception("attempt raised")

    written = stream.getvalue()
    assert SECRET not in written
    assert "json.decoder.JSONDecodeError" in written and "KeyError" in written
    assert "in parse" in written  # the frames are kept: where it happened


def test_a_failed_tasks_line_names_its_exception_but_not_its_text(caplog):
    """Celery logs a task's failure as 'Task name[id] raised unexpected: <repr of the
    exception>'; the repr quotes whatever the exception was raised with."""
    from reqrun.celery import app

    @app.task(name=f"tests.logging.fails_{uuid.uuid4().hex}")
    def fails():
        raise ValueError(f"{SECRET}-prompt")

    with caplog.at_level(logging.ERROR, logger="celery.app.trace"):
        fails.apply()

    [line] = [r for r in caplog.records if r.name == "celery.app.trace"]
    assert "ValueError" in line.getMessage() and fails.name in line.getMessage()
    assert SECRET not in line.getMessage()
    assert SECRET not in JsonFormatter().format(line)


def test_a_warning_kombu_repeats_through_an_outage_is_written_once_a_minute(caplog):
    """kombu's Redis transport warns, with a traceback, each second while a full Redis refuses
    its binding refresh."""
    kombu = logging.getLogger("kombu.transport.redis")
    refused = f"maybe_refresh_binding_expiry: Redis error, will retry {uuid.uuid4().hex}"
    other = f"Redis BRPOP got no reply; dropping stale connection {uuid.uuid4().hex}"

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            kombu.warning(refused)
        kombu.warning(other)

    assert [record.getMessage() for record in caplog.records] == [refused, other]


def test_celerys_warning_about_a_setting_reqrun_sets_is_not_logged(caplog):
    """Celery warns at every broker reconnect that the default of
    worker_cancel_long_running_tasks_on_connection_loss changes in Celery 6."""
    warnings = logging.getLogger("py.warnings")  # where logging.captureWarnings writes them
    settled = (
        "consumer.py:427: CPendingDeprecationWarning: \nIn Celery 5.1 we introduced an optional"
        " breaking change ... using the worker_cancel_long_running_tasks_on_connection_loss"
        " setting."
    )
    other = "platforms.py:893: SecurityWarning: You're running the worker with superuser"

    with caplog.at_level(logging.WARNING):
        warnings.warning("%s", settled)
        warnings.warning("%s", other)

    assert [record.getMessage() for record in caplog.records] == [other]


def test_a_download_aborted_on_purpose_is_not_logged_again_as_the_servers_error():
    """uvicorn logs each exception out of the application as an error with its traceback.
    A download ReqRun cuts on purpose (an export expiring midway: services.ExportCut) was
    already logged as a warning saying why: an error for it would page whoever watches
    errors for nothing. Any other exception there is still the server's error."""
    server = logging.getLogger("uvicorn.error")  # where uvicorn reports the application's
    message = "Exception in ASGI application\n"
    # On the logger itself: a uvicorn run in this process earlier may have stopped its
    # loggers propagating to the root, where caplog listens.
    written = RecordsKept()
    server.addHandler(written)
    try:
        server.error(message, exc_info=ExportCut("chunk 2 of 3 is gone"))
        server.error(message, exc_info=ValueError("a bug"))
    finally:
        server.removeHandler(written)

    assert [record.exc_info[0] for record in written.records] == [ValueError]


class RecordsKept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_beats_line_for_an_entry_it_sends_every_2_s_is_written_once_a_minute(caplog):
    """Beat logs each entry it sends; the request sweep's, every 2 s, was thirty lines a
    minute. Each entry's line stays, once a minute at most."""
    beat = logging.getLogger("celery.beat")
    sending = "Scheduler: Sending due task %s (%s)"
    sweep = f"sweep-requests-{uuid.uuid4().hex}"
    other = f"privacy-sweep-{uuid.uuid4().hex}"

    with caplog.at_level(logging.INFO):
        for _ in range(3):
            beat.info(sending, sweep, "requests_app.tasks.sweep_requests")
        beat.info(sending, other, "privacy.tasks.sweep_privacy")

    assert [record.args[0] for record in caplog.records] == [sweep, other]
