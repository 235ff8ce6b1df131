"""What ReqRun counts for Prometheus: the /v1 surface, attempts, the sweeper, waiting callers.

The engine, the API and the dashboard call the small functions here; `/metrics` (core)
exposes them. With PROMETHEUS_MULTIPROC_DIR set, every web, worker and beat process writes
its figures to that directory and a scrape adds them up (docs/operations.md). Labels are
few and fixed: endpoints, statuses, outcomes and error codes, never ids or payloads.
"""

import functools
import logging
import os
import re
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone
from prometheus_client import Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


def process_name(host: str = socket.gethostname().replace("_", "-")) -> str:
    """This process among all that write to PROMETHEUS_MULTIPROC_DIR: its host and PID.

    prometheus_client names a process's files by PID alone, but processes in containers that
    share the directory (compose.yaml) each run as PID 1 and would write to the same files;
    a container's host name is its own. (`_` separates the parts of those file names.)
    """
    return f"{host}-{os.getpid()}"


def count_as_this_process(directory: str | Path) -> None:
    """Write this process's figures to `directory` under `process_name()`.

    A container restarted keeps its host name and its PID: the live gauges its predecessor
    left (callers it held when it stopped) are dropped, not taken over; its counters go on.
    """
    values.ValueClass = values.MultiProcessValue(process_identifier=process_name)
    multiprocess.mark_process_dead(process_name(), str(directory))


# Before any metric below is made: each takes its storage from ValueClass.
if settings.PROMETHEUS_MULTIPROC_DIR:
    count_as_this_process(settings.PROMETHEUS_MULTIPROC_DIR)

# Seconds. LLM calls take from a fraction of a second to minutes.
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# ReqRun's own share: from accept to the first attempt's start.
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

ACCEPTED = Counter(
    "reqrun_api_requests_accepted",
    "Calls to a proxied /v1 endpoint that were accepted: created, replayed or attached.",
    ["endpoint", "outcome"],
)
REFUSED = Counter(
    "reqrun_api_requests_refused",
    "/v1 calls answered with an error by ReqRun itself, by error code.",
    ["endpoint", "status", "code"],
)
FINISHED = Counter(
    "reqrun_requests_finished",
    "Requests that ended when an attempt concluded, by final status.",
    ["status"],
)
ATTEMPTS = Counter("reqrun_attempts", "Attempts concluded, by outcome.", ["outcome"])
UPSTREAM_LATENCY = Histogram(
    "reqrun_upstream_latency_seconds",
    "How long an attempt's upstream call took, by outcome.",
    ["outcome"],
    buckets=UPSTREAM_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "reqrun_queue_wait_seconds",
    "ReqRun's added time: from accepting a request to the start of its first attempt.",
    buckets=QUEUE_WAIT_BUCKETS,
)
FAILOVERS = Counter(
    "reqrun_failovers", "Attempts that moved a request on to another of its project's upstreams."
)
BREAKER_CHANGES = Counter(
    "reqrun_upstream_breaker_changes",
    "Upstream circuit breakers changing state, by the state they entered.",
    ["state"],
)
SWEEPS = Counter("reqrun_sweeps", "Sweeper runs.")
SWEEP_DURATION = Histogram(
    "reqrun_sweep_duration_seconds",
    "How long one sweep took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SWEEP_DISPATCHED = Counter("reqrun_sweep_dispatched", "Requests the sweeper published again.")
SWEEP_RECOVERED = Counter("reqrun_sweep_recovered", "Attempts the sweeper closed as worker_lost.")
# "livesum": the sum over the processes alive now, so a restarted process starts from zero.
WAITERS = Gauge(
    "reqrun_waiting_callers",
    "Callers holding a connection while their request runs (wait mode, ?wait=).",
    multiprocess_mode="livesum",
)
OPEN_STREAMS = Gauge(
    "reqrun_open_streams",
    "Streams being relayed to callers now.",
    multiprocess_mode="livesum",
)


def _never_raises(function):
    """A figure that cannot be recorded is logged; it never fails the request it describes."""

    @functools.wraps(function)
    def record(*args, **kwargs):
        try:
            function(*args, **kwargs)
        except Exception:
            logger.exception("metric not recorded", extra={"metric": function.__name__})

    return record


@_never_raises
def request_accepted(*, endpoint: str, outcome: str) -> None:
    ACCEPTED.labels(endpoint=endpoint, outcome=outcome).inc()


def _endpoint_of(context: dict) -> str:
    """The endpoint a /v1 error belongs to, as a fixed label: the view's endpoint, or the
    route's pattern (`/v1/requests/{request_id}`), never the path with its ids."""
    view = context.get("view")
    if getattr(view, "endpoint", ""):
        return view.endpoint
    match = getattr(context.get("request"), "resolver_match", None)
    route = getattr(match, "route", "") or ""
    if not route or route.startswith("^"):  # the catch-all for unknown /v1 paths
        return "other"
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def counts_refusals(handler):
    """Wraps the /v1 exception handler: counts every error answer it makes, by its code."""

    @functools.wraps(handler)
    def handle(exc, context):
        response = handler(exc, context)
        _count_refusal(context, response)
        return response

    return handle


@_never_raises
def _count_refusal(context: dict, response) -> None:
    if response is None:
        return
    error = (response.data or {}).get("error") if isinstance(response.data, dict) else None
    code = (error or {}).get("code") or "none"
    REFUSED.labels(
        endpoint=_endpoint_of(context), status=str(response.status_code), code=code
    ).inc()


@_never_raises
def attempt_finished(*, outcome: str, latency_ms: int | None, ended_status: str | None) -> None:
    """An attempt's result was recorded. Keyword-only, so an `upstream` label can join later."""
    ATTEMPTS.labels(outcome=outcome).inc()
    if latency_ms is not None:  # the sweeper's worker_lost has none
        UPSTREAM_LATENCY.labels(outcome=outcome).observe(latency_ms / 1000)
    if ended_status is not None:
        FINISHED.labels(status=ended_status).inc()


@_never_raises
def failed_over() -> None:
    FAILOVERS.inc()


@_never_raises
def breaker_changed(state: str) -> None:
    BREAKER_CHANGES.labels(state=state).inc()


@_never_raises
def attempt_claimed(*, first: bool, waited: timedelta) -> None:
    """A worker claimed a request; its first claim ends ReqRun's own share of the wait."""
    if first:
        QUEUE_WAIT.observe(max(0.0, waited.total_seconds()))


@_never_raises
def swept(*, started: datetime, dispatched: int, recovered: int) -> None:
    SWEEPS.inc()
    SWEEP_DURATION.observe(max(0.0, (timezone.now() - started).total_seconds()))
    SWEEP_DISPATCHED.inc(dispatched)
    SWEEP_RECOVERED.inc(recovered)


@_never_raises
def waiter_started() -> None:
    WAITERS.inc()


@_never_raises
def waiter_ended() -> None:
    WAITERS.dec()


@_never_raises
def stream_opened() -> None:
    OPEN_STREAMS.inc()


@_never_raises
def stream_closed() -> None:
    OPEN_STREAMS.dec()


# Literal statuses, as in the partial indexes' predicate, so even a generic plan uses them.
ACTIVE_REQUESTS_SQL = """
    SELECT status, count(*), min(created_at) FILTER (WHERE status = 'queued')
    FROM requests_app_request
    WHERE status IN ('queued', 'running', 'retrying')
    GROUP BY status
"""


class RequestQueueCollector(Collector):
    """Read at scrape time from PostgreSQL, the source of truth: how many requests are
    queued, retrying and running, and how long the oldest queued one has waited."""

    def collect(self):
        try:
            with connection.cursor() as cursor:
                cursor.execute(ACTIVE_REQUESTS_SQL)
                rows = cursor.fetchall()
        except DatabaseError:
            logger.warning("metrics: active requests not readable")
            return
        counts = {"queued": 0, "retrying": 0, "running": 0}
        oldest = None
        for status, count, first_created in rows:
            counts[status] = count
            oldest = first_created or oldest
        active = GaugeMetricFamily(
            "reqrun_requests_active", "Requests not yet finished, by status.", labels=["status"]
        )
        for status, count in counts.items():
            active.add_metric([status], count)
        yield active
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp())
        yield GaugeMetricFamily(
            "reqrun_oldest_queued_request_age_seconds",
            "How long the oldest request still queued has waited since it was accepted "
            "(0 when none is queued).",
            value=age,
        )


# Only upstreams whose breaker is not closed, through the partial index that holds just them.
BREAKERS_SQL = """
    SELECT count(*) FILTER (WHERE breaker_open_until > now()),
           count(*) FILTER (WHERE breaker_open_until <= now())
    FROM projects_upstream
    WHERE breaker_open_until IS NOT NULL
"""


class UpstreamBreakerCollector(Collector):
    """Read at scrape time from PostgreSQL: how many upstreams' breakers are open or
    half-open now (docs/failover.md)."""

    def collect(self):
        try:
            with connection.cursor() as cursor:
                cursor.execute(BREAKERS_SQL)
                opened, half_open = cursor.fetchone()
        except DatabaseError:
            logger.warning("metrics: upstream breakers not readable")
            return
        breakers = GaugeMetricFamily(
            "reqrun_upstream_breakers_not_closed",
            "Upstreams whose circuit breaker is open or half-open now, by state.",
            labels=["state"],
        )
        breakers.add_metric(["open"], opened)
        breakers.add_metric(["half_open"], half_open)
        yield breakers
