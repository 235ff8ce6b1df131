"""Log lines with a fixed set of metadata fields, as JSON (production) or readable text.

Call sites log a constant message with `extra={...}`. The formatters here turn each record
into `time, level, logger, event` plus the metadata fields below, under one name each
(`project_id` is written as `project`, `status_code` as `status`). A key that is not on the
allow-list, or a value that is not a plain scalar, is dropped: a stray `extra` can never
carry a prompt, a completion, a key or a webhook body into a log.

`bind(...)` adds fields to every line logged inside it (the `BoundFields` filter puts them on
the record); a worker binds the task's name, and for the request task its request's pk.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from django.conf import settings
from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

logger = logging.getLogger(__name__)

# Record attribute -> field name. The fixed fields come first, in this order, on every line
# that has them; the rest are metadata some call sites add.
FIELDS: dict[str, str] = {
    "request_id": "request_id",
    "request_pk": "request_pk",
    "attempt": "attempt",
    "project": "project",
    "project_id": "project",
    "account": "account",
    "account_id": "account",
    "upstream": "upstream",
    "next_upstream": "next_upstream",
    "breaker": "breaker",
    "status": "status",
    "status_code": "status",
    "latency_ms": "latency_ms",
    "outcome": "outcome",
    "error_code": "error_code",
    "endpoint": "endpoint",
    "task": "task",
    "task_id": "task_id",
    # Engine, sweeper and retention.
    "dispatched": "dispatched",
    "recovered": "recovered",
    "headers": "headers",
    "response_bodies": "response_bodies",
    "records": "records",
    "exception": "exception",
    "sqlstate": "sqlstate",
    "down": "down",
    "view": "view",
    "stored": "stored",
    # Accounts, projects, billing, privacy.
    "user_id": "user_id",
    "subject_id": "subject_id",
    "operator_id": "operator_id",
    "action": "action",
    "template": "template",
    "count": "count",
    "provider_key_cleared": "provider_key_cleared",
    "customer_id": "customer_id",
    "transaction_id": "transaction_id",
    "subscription_id": "subscription_id",
    "from_plan": "from_plan",
    "to_plan": "to_plan",
    "event_id": "event_id",
    "event_type": "event_type",
    "duplicate": "duplicate",
    "failures": "failures",
    "reason": "reason",
    "error": "error",
    "export_id": "export_id",
    "size_bytes": "size_bytes",
    "chunks_served": "chunks_served",
    "login_deleted": "login_deleted",
    "closed_at": "closed_at",
    "requests_deleted": "requests_deleted",
    "projects_deleted": "projects_deleted",
    # Worker infrastructure.
    "queue": "queue",
    "timeout": "timeout",
    "waited_seconds": "waited_seconds",
    "hostname": "hostname",
    "queues": "queues",
    "concurrency": "concurrency",
    "tasks": "tasks",
    "pending_migrations": "pending_migrations",
    "chunks": "chunks",
}
SCALARS = (str, int, float, bool)

_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_fields", default=MappingProxyType({})
)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged in this context (thread or task), until it ends."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


class BoundFields(logging.Filter):
    """Copies the fields of the current `bind()` onto each record; a record's own win."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _bound.get().items():
            if name not in record.__dict__:
                setattr(record, name, value)
        return True


class ApiAnswers(logging.Filter):
    """On `django.request`, which logs every 5xx answer as an error: under /v1 such an answer
    is one ReqRun chose (the upstream's own error passed on, a 502/504 when no upstream
    answered, a 503 in an outage), logged with its request and attempts. ReqRun's own
    failures carry their exception: those stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = getattr(getattr(record, "request", None), "path", "")
        return record.exc_info is not None or not path.startswith("/v1/")


class TaskFailures(logging.Filter):
    """On `celery.app.trace`, whose failure line ends with the exception's repr ('raised
    unexpected: ValueError(...)'), which quotes what it was raised with: the line names the
    exception's type instead; its traceback is written without messages as any other."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "exc" in record.args:
            kind = record.exc_info[0].__name__ if record.exc_info else "an exception"
            record.args = {**record.args, "exc": kind}
            if isinstance(getattr(record, "data", None), dict):
                record.data = record.args
        return True


class DeliberateAbort(Exception):
    """Raised out of a streamed response to abort it on purpose, so the client sees an
    incomplete transfer rather than a short file, once the code raising it has logged why
    (privacy's ExportCut). The server's own report of it is dropped (`DeliberateAborts`)."""


class DeliberateAborts(logging.Filter):
    """On `uvicorn.error`, which logs each exception out of the application as `Exception in
    ASGI application`, an error with its traceback: not for a DeliberateAbort, already
    logged as a warning by the code that raised it. Any other exception stays an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DeliberateAbort))


class Repeats(logging.Filter):
    """On a library's logger that repeats a warning for as long as an outage lasts (kombu's
    Redis transport: each second while a full Redis refuses its binding refresh, with a
    traceback): each message is written at most once a minute. The outage is still in the log;
    sixty tracebacks a minute of it are not."""

    def __init__(self, seconds: float = 60.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = self.key(record)
        last = self._last.get(key)
        if last is not None and record.created - last < self.seconds:
            return False
        self._last[key] = record.created
        return True

    def key(self, record: logging.LogRecord) -> str:
        """What makes two lines the same: the message before its arguments."""
        return record.msg


class RepeatedLines(Repeats):
    """On `celery.beat`, which logs each entry it sends (`Scheduler: Sending due task
    sweep-requests (…)`): the sweep, every 2 s, made thirty lines a minute around whatever a
    reader looks for (in development, the emails). Each line, its entry named, is written at
    most once a minute; an entry due less often is written each time."""

    def key(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class SettledWarnings(logging.Filter):
    """On `py.warnings`: Celery warns at every reconnect to the broker that
    `worker_cancel_long_running_tasks_on_connection_loss` will default to True in Celery 6.
    ReqRun sets it (to False: attempts in flight run to their end), so it is dropped."""

    SETTINGS = ("worker_cancel_long_running_tasks_on_connection_loss",)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(setting in message for setting in self.SETTINGS)


def metadata(record: logging.LogRecord) -> dict[str, Any]:
    """The record's allowed metadata, renamed, in FIELDS order; nothing else."""
    fields: dict[str, Any] = {}
    for attribute, name in FIELDS.items():
        value = record.__dict__.get(attribute)
        if value is None or name in fields or not isinstance(value, SCALARS):
            continue
        fields[name] = value
    return fields


def traceback_without_messages(exc_info) -> str:
    """A traceback as Python prints it (each chained exception, its frames and its type),
    less the exceptions' messages: those quote what failed (a body, a key, a row's values)."""
    chain, error = [], exc_info[1]
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    blocks = []
    for error in reversed(chain):
        kind = type(error)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        frames = "".join(traceback.format_tb(error.__traceback__))
        blocks.append(f"Traceback (most recent call last):\n{frames}{name} (message not logged)")
    return "\n\nwhich led to:\n\n".join(blocks)


class JsonFormatter(LibraryJsonFormatter):
    """One JSON object per line: time, level, logger, event, the metadata, a traceback."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return traceback_without_messages(ei)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = (
            datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        ).replace("+00:00", "Z")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        # A dict logged as the message is not shown: its keys were never reviewed.
        log_data["event"] = record.message
        log_data.update(metadata(record))
        for key in ("exc_info", "stack_info"):
            if message_dict.get(key):
                log_data[key] = message_dict[key]


class ConsoleFormatter(logging.Formatter):
    """`time LEVEL logger event key=value ...` for a developer's terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return traceback_without_messages(ei)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        pairs = " ".join(_pair(name, value) for name, value in metadata(record).items())
        line = super().formatMessage(record)
        return f"{line} {pairs}" if pairs else line


def _pair(name: str, value: Any) -> str:
    text = str(value)
    return f'{name}="{text}"' if not text or " " in text or '"' in text else f"{name}={text}"


# Celery's signals (connected in reqrun/celery.py).
_task_tokens: dict[str, contextvars.Token] = {}


def configure_celery_logging(**_: Any) -> None:
    """setup_logging: with a receiver, Celery installs no handlers of its own, so the worker
    and beat log through Django's LOGGING, like the web; Python warnings become log lines."""
    logging.config.dictConfig(settings.LOGGING)
    logging.captureWarnings(True)


def prepare_worker(*, instance: Any, **_: Any) -> None:
    """celeryd_init, the worker's first moment: log through LOGGING already (Celery warns
    about privileges right after this), and in JSON mode print no multi-line start banner;
    `announce_worker` logs what operators read in it instead."""
    configure_celery_logging()
    if settings.LOG_FORMAT == "json":
        instance.quiet = True


def announce_worker(*, instance: Any, **_: Any) -> None:
    """celeryd_after_setup: the banner's facts as one line."""
    if settings.LOG_FORMAT == "json":
        logger.info(
            "worker started",
            extra={
                "hostname": instance.hostname,
                "queues": ",".join(sorted(instance.app.amqp.queues.consume_from)),
                "concurrency": instance.concurrency,
                "tasks": ",".join(
                    sorted(name for name in instance.app.tasks if not name.startswith("celery."))
                ),
            },
        )


def bind_task(*, task_id: str, task: Any, args: Any = None, request_task: str = "", **_: Any):
    """task_prerun: bind the task's name and id, and for `request_task` its first argument
    (the request's pk) as `request_pk`.

    A worker thread runs one task at a time and both signals run on it, so the binding set
    here is the one `unbind_task` removes."""
    fields: dict[str, Any] = {"task": task.name, "task_id": task_id}
    if task.name == request_task and args:
        fields["request_pk"] = args[0]
    _task_tokens[task_id] = _bound.set({**_bound.get(), **fields})


def unbind_task(*, task_id: str, **_: Any) -> None:
    """task_postrun."""
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        try:
            _bound.reset(token)
        except ValueError:  # not the context that bound it: nothing of ours to undo here
            pass
