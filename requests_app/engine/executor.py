"""Running a request against its upstreams: route, claim, attempt, record, then finish,
fail over or retry.

A worker picks the upstream the attempt goes to (failover.py, with each upstream's
breaker), then claims the request with one conditional UPDATE that moves it to `running`,
bumps `attempt_count` (the fencing token), sets a lease and opens the attempt's row naming
that upstream. Every later write names that attempt number, so a worker that lost its
lease can no longer change the request. Moving on to the next upstream happens at once;
short backoffs are slept in the worker; longer ones are written to `next_attempt_at` and
dispatched by the sweeper.
"""

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from core import encryption, logs, shutdown
from core.outages import database_unavailable, is_outage, is_redis_outage, sqlstate
from core.prepared import PreparedGet, together
from projects.limits import PLAN_STATE_RELATED, limits_for
from projects.models import Upstream
from projects.upstreams import provider_key_of
from requests_app import metrics
from requests_app.engine import breaker, concurrency, failover, retry_policy, sql, upstream
from requests_app.engine.cancel import cancel_waiting
from requests_app.engine.holds import defer_for_capacity, hold_if_suspended
from requests_app.engine.notifications import Along, announce_finished, answer_of
from requests_app.engine.outcomes import AttemptResult
from requests_app.engine.stream_attempt import stream_attempt
from requests_app.engine.usage import usage_from_event_stream
from requests_app.error_catalog import error_object
from requests_app.models import TERMINAL_STATUSES, Attempt, Request, Status

logger = logging.getLogger(__name__)

INLINE_BACKOFF_MAX_SECONDS = 2.0
# How long a worker keeps an attempt's result while the database cannot take it (an outage,
# a restart), trying again with backoff; past it the request is left to the sweeper.
CONCLUSION_RETRY_SECONDS = 300.0
RESPONSE_RETENTION = timedelta(hours=24)


# The request with its project and the account's plan, read before each attempt in one
# round trip with the project's enabled upstreams (failover.REQUESTS_UPSTREAMS).
REQUEST_TO_RUN: PreparedGet[Request] = PreparedGet(
    lambda pk: Request.objects.select_related(
        "project", "account", f"account__{PLAN_STATE_RELATED}"
    ).filter(pk=pk),
    pk=0,
)


def lease_for(request: Request) -> timedelta:
    """How long a claim lasts: the attempt timeout plus a grace for slow bookkeeping."""
    return timedelta(
        seconds=request.project.attempt_timeout_seconds + settings.REQRUN_LEASE_GRACE_SECONDS
    )


def expired_if_overdue(request: Request, *, now: datetime) -> bool:
    """Whether the request's deadline has passed; a waiting one then ends as `expired`.

    One whose last attempt got an answer (a 503 it was waiting to retry) ends with that
    answer, as when its attempts run out (`consequence_of`); one without, with
    `deadline_exceeded`."""
    if request.deadline_at > now:
        return False
    if sql.end_waiting(
        request_id=request.pk,
        status=Status.EXPIRED,
        now=now,
        only_if_due=True,
        keep_answer=True,
        error={
            "message": "The request's deadline passed before it could be run.",
            "type": "upstream_error",
            "param": None,
            "code": "deadline_exceeded",
        },
    ):
        announce_finished(request)
    return True


def claim_request(request: Request, *, upstream_name: str) -> Attempt | None:
    """Take the request for one attempt if it is due, and open the attempt's row naming the
    upstream it goes to.

    None if someone else has it, it was canceled, or it ended. `request` is a fresh read;
    the claim is conditioned on its attempt count, so the attempt returned is exactly the
    one this worker now owns (its number is the fencing token for every later write).
    """
    now = timezone.now()
    if expired_if_overdue(request, now=now):
        return None
    opened = sql.claim(
        request_id=request.pk,
        attempt_count=request.attempt_count,
        upstream=upstream_name,
        now=now,
        lease_until=now + lease_for(request),
    )
    if opened is None:
        return None
    metrics.attempt_claimed(first=request.started_at is None, waited=now - request.created_at)
    number = request.attempt_count + 1
    request.status = Status.RUNNING
    request.attempt_count = number
    request.started_at = request.started_at or now
    attempt = Attempt(
        id=opened, request=request, number=number, upstream=upstream_name, started_at=now
    )
    attempt._state.adding = False
    return attempt


INTERNAL_ERROR = AttemptResult(Attempt.Outcome.FATAL_ERROR, error_code="internal_error")


def perform_attempt(
    request: Request, attempt: Attempt, route: failover.Route | None, *, slot: str
) -> AttemptResult:
    """Call the routed upstream once for the claimed attempt; never raises.

    Whatever goes wrong, ours or the upstream's, comes back as a result to record, so no
    attempt is left `running` until its lease runs out.
    """
    # Hand the database connection back to the pool while the upstream works: a slow LLM
    # call must not pin a connection for its whole duration.
    close_old_connections()
    started = time.monotonic()
    # What is logged on the way (a header dropped, an exception classified) names its request.
    with logs.bind(request_id=request.public_id, attempt=attempt.number):
        try:
            result = _call_upstream(request, attempt.number, slot, route)
        except Exception as error:  # noqa: BLE001 - classify() records it as an outcome
            result = upstream.classify(error=error)
    result.upstream = attempt.upstream
    attempt.latency_ms = int((time.monotonic() - started) * 1000)
    return result


@dataclass(frozen=True)
class Consequence:
    """What an attempt's result means for its request."""

    status: str
    next_attempt_at: datetime | None = None
    delay: float | None = None  # a retry soon enough to sleep for in this worker
    error: dict | None = None
    partial: bool = False
    next_upstream: failover.NextUpstream | None = None

    @property
    def ends(self) -> bool:
        return self.status in TERMINAL_STATUSES


def consequence_of(
    request: Request,
    number: int,
    result: AttemptResult,
    *,
    answered: bool,
    now: datetime,
    then: failover.NextUpstream | None = None,
) -> Consequence:
    """Fail over, retry, or end as what: the failover and retry policies, the deadline and
    the streaming rule. `then` is where the next attempt would go (failover.py)."""
    if result.client_gone:
        return Consequence(Status.CANCELED, partial=result.stream_started)
    if result.stream_started and result.error_code in OUR_STREAM_FAULTS:
        message = OUR_STREAM_FAULTS[result.error_code]
        return Consequence(
            Status.FAILED, error=error_object(result.error_code, message), partial=True
        )
    if result.stream_started and result.outcome != Attempt.Outcome.SUCCESS:
        what = (
            "The upstream reported an error inside its stream"
            if result.error_code == "upstream_stream_error"
            else "The stream broke off after it had started"
        )
        error = {
            "message": f"{what}; the answer is incomplete. Discard it and send the request again.",
            "type": "upstream_error",
            "param": None,
            "code": result.error_code,
        }
        return Consequence(Status.FAILED, error=error, partial=True)
    moves = then is not None and then.moved  # on to the next upstream: no backoff
    retryable = moves or result.outcome not in (
        Attempt.Outcome.SUCCESS,
        Attempt.Outcome.FATAL_ERROR,
    )
    if retryable and number < request.max_attempts:
        delay = 0.0 if moves else retry_policy.backoff_seconds(number, result.retry_after_ms)
        next_at = now + timedelta(seconds=delay)
        if next_at < request.deadline_at:
            inline = delay if delay <= INLINE_BACKOFF_MAX_SECONDS else None
            return Consequence(
                Status.RETRYING, next_attempt_at=next_at, delay=inline, next_upstream=then
            )
        status = Status.EXPIRED
    elif result.outcome == Attempt.Outcome.SUCCESS:
        status = Status.SUCCEEDED
    else:
        status = Status.FAILED
    error = None if answered else _no_response_error(result, expired=status == Status.EXPIRED)
    return Consequence(status, error=error)


def conclude_attempt(
    request: Request,
    number: int,
    result: AttemptResult,
    *,
    chain: list[Upstream] | None = None,
    latency_ms: int | None = None,
    lease_expired_before: datetime | None = None,
    along: Along | None = None,
) -> tuple[bool, float | None]:
    """Record the attempt's result and its consequence for the request in one statement.

    Only while the attempt's row is still open: when this worker outlived its lease, the
    sweeper has closed the row as `worker_lost` and scheduled the retry, and this late
    result is dropped rather than written over that record (the sweeper concludes through
    this same function, with `lease_expired_before`). `chain` is the project's upstreams as
    routed (failover.chain_of), read here when not given; `along`, Redis commands to send
    with the completion notice if the request ends. Returns whether it was written and,
    for a retry due soon, the wait before it.
    """
    now = timezone.now()
    response = _response_fields(request, result)
    step = None
    if result.outcome != Attempt.Outcome.SUCCESS:
        chain = failover.chain_of(request) if chain is None else chain
        step = failover.next_upstream(request.project, chain, request, result)
    then = consequence_of(
        request, number, result, answered=result.response is not None, now=now, then=step
    )
    following = then.next_upstream
    written = sql.conclude(
        request_id=request.pk,
        number=number,
        now=now,
        attempt={
            "latency_ms": latency_ms,
            "outcome": result.outcome,
            "status_code": result.status_code,
            "error_code": result.error_code,
            "retry_after_ms": result.retry_after_ms,
        },
        status=then.status,
        ends=then.ends,
        next_attempt_at=then.next_attempt_at,
        next_upstream=following.name if following else "",
        upstream_tries=following.tries if following else 0,
        error=then.error,
        partial=then.partial,
        response=response,
        lease_expired_before=lease_expired_before,
    )
    if not written:
        logger.warning(
            "attempt outlived its lease; its result is dropped",
            extra={"request_id": request.public_id, "attempt": number},
        )
        return False, None
    logger.info(
        "attempt finished",
        extra={
            "request_id": request.public_id,
            "attempt": number,
            "project_id": request.project.public_id,
            "account_id": request.account.public_id,
            "upstream": result.upstream,
            "outcome": result.outcome,
            "status_code": result.status_code,
            "latency_ms": latency_ms,
            "next_upstream": following.name if following and following.moved else None,
        },
    )
    if following and following.moved:
        metrics.failed_over()
    metrics.attempt_finished(
        outcome=result.outcome,
        latency_ms=latency_ms,
        ended_status=then.status if then.ends else None,
    )
    if not then.ends:
        cancel_waiting(request, only_if_requested=True)  # a cancel asked for meanwhile
        return True, then.delay
    # `request` was read at the start of this attempt, so with these writes it is the row.
    request.status, request.finished_at, request.lease_until = then.status, now, None
    request.request_body, request.error, request.partial = None, then.error, then.partial
    for field, value in response.items():
        setattr(request, field, value)
    announce_finished(request, answer=answer_of(request), along=along)
    return True, None


def conclude_as_internal_error(
    request: Request, number: int, result: AttemptResult, error: Exception, **options
) -> tuple[AttemptResult, float | None]:
    """Record attempt `number` as our own error, because `error` (not an outage: a value the
    database refuses, an answer shaped like nothing foreseen) kept its `result` from being
    recorded: rather than leave the request running. A stream that had started keeps what
    its callers were sent: it is never retried, ends `partial`, and a replay sends the
    delivered events and then the error. `options` as for `conclude_attempt`; returns the
    result recorded and the wait before a retry."""
    logger.error(
        "attempt result not recorded",
        extra={"request_id": request.public_id, "exception": type(error).__name__},
    )
    if result.stream_started:
        result = replace(
            INTERNAL_ERROR,
            status_code=result.status_code,
            response=result.response,
            stream_started=True,
            stream_unread=result.stream_unread,
        )
    else:
        result = INTERNAL_ERROR
    _, delay = conclude_attempt(request, number, result, **options)
    return result, delay


KEY_RING_ADVICE = (
    "the encryption key it was stored under is no longer in REQRUN_ENCRYPTION_KEYS. The "
    "operator must put that key back in REQRUN_ENCRYPTION_KEYS (after the current primary) and "
    "restart ReqRun"
)
UNREADABLE_PROVIDER_KEY = (
    f"ReqRun cannot decrypt the upstream's stored provider key: {KEY_RING_ADVICE}, or the "
    "provider key must be entered again in the project's settings."
)
UNREADABLE_REQUEST_BODY = (
    f"ReqRun cannot decrypt this request's stored request body, so it was not sent upstream: "
    f"{KEY_RING_ADVICE} so that other requests stored under it can run. Send this one again."
)
UNREADABLE_STREAM = (
    "ReqRun could not decrypt this request's stream while relaying it, so the answer is "
    f"incomplete: {KEY_RING_ADVICE}. Every web and worker process must have the same "
    "REQRUN_ENCRYPTION_KEYS. Send the request again."
)
# A started stream ended by a fault of ReqRun's, not the upstream's: said as ours.
OUR_STREAM_FAULTS = {
    "encryption_key_missing": UNREADABLE_STREAM,
    "internal_error": (
        "ReqRun could not record this request's stream after it had started (a bug in ReqRun; "
        "it has been logged), so it is kept as incomplete. Discard the answer and send the "
        "request again."
    ),
}


def _call_upstream(
    request: Request, number: int, slot: str, route: failover.Route | None
) -> AttemptResult:
    """One attempt against the routed upstream, streamed or not."""
    target = route.upstream if route else None
    if target is None or not target.has_provider_key:
        return AttemptResult(Attempt.Outcome.FATAL_ERROR, error_code="provider_key_missing")
    provider_key = provider_key_of(target)
    stored_body = encryption.decrypt_stored(
        request.request_body, request_id=request.public_id, stored="request_body"
    )
    if provider_key is None or stored_body is None:
        return AttemptResult(
            Attempt.Outcome.FATAL_ERROR,
            error_code="encryption_key_missing",
            message=UNREADABLE_PROVIDER_KEY if provider_key is None else UNREADABLE_REQUEST_BODY,
            key_unreadable=provider_key is None,
        )
    body = target.mapped_body(stored_body)
    url = upstream.endpoint_url(target.base_url, request.endpoint)
    if request.stream:
        return stream_attempt(
            request=request,
            number=number,
            upstream_name=target.name,
            url=url,
            provider_key=provider_key,
            body=body,
            lease=lease_for(request),
            slot=slot,
            probe=target if route.probe else None,
        )
    return upstream.call(
        method="POST",
        url=url,
        provider_key=provider_key,
        body=body,
        timeout=request.project.attempt_timeout_seconds,
    )


# The stored answer's columns, as an attempt without an answer leaves them: the request's
# answer is its last attempt's (sql.conclude).
UNANSWERED = dict.fromkeys(
    ("response_status_code", "response_headers", "response_body", "response_expires_at", "usage")
)


def _response_fields(request: Request, result: AttemptResult) -> dict:
    response = result.response
    if response is None:
        return UNANSWERED
    if response.status_code >= 300:
        usage = None
    elif request.stream:
        usage = usage_from_event_stream(response.body)
    else:
        usage = result.usage
    # A stream that started has already reached its readers through Redis; with zero
    # retention no copy of it is kept at all. An answer that never started streaming (the
    # upstream refused it), or streamed to nobody (its callers took their 202), reaches its
    # caller from this record, so it is kept, like a plain answer, until a caller has it.
    delivered = result.stream_started and not result.stream_unread
    keep = not (delivered and request.project.zero_retention)
    return {
        "response_status_code": response.status_code,
        "response_headers": upstream.with_upstream_header(response.headers, result.upstream),
        "response_body": encryption.encrypt(response.body) if keep else None,
        "response_expires_at": timezone.now() + RESPONSE_RETENTION,
        "usage": usage,
    }


NO_RESPONSE_MESSAGES = {
    "provider_key_missing": "The project has no provider key. Set one in the project's settings.",
    "upstream_not_allowed": "The upstream address is private, loopback or link-local, which is "
    "not allowed.",
    "internal_error": "ReqRun could not run this request because of an internal error; it has "
    "been logged. Retry, and write to support@reqrun.com with the ReqRun-Request-Id if it "
    "persists.",
    "worker_lost": "The worker running this request was lost on its last attempt.",
    "invalid_event_stream": "The upstream answered stream: true with something other than an "
    "event stream; nothing was relayed.",
}


def _no_response_error(result: AttemptResult, *, expired: bool = False) -> dict:
    code = result.error_code or ("deadline_exceeded" if expired else None)
    if result.message:
        message = result.message
    elif result.error_code == "upstream_response_too_large":
        message = (
            f"The upstream's answer was larger than {settings.REQRUN_MAX_RESPONSE_BYTES:,} bytes; "
            "ReqRun neither keeps nor relays it."
        )
    elif result.error_code in NO_RESPONSE_MESSAGES:
        message = NO_RESPONSE_MESSAGES[result.error_code]
    elif expired:
        message = "The request's deadline passed before the upstream answered."
    elif result.outcome == Attempt.Outcome.TIMEOUT:
        message = "The upstream did not answer its last attempt in time."
    else:
        # Refused, dropped before an answer, or cut partway through one.
        message = "The connection to the upstream failed or broke off on the last attempt."
    if code in ("internal_error", "encryption_key_missing"):
        return error_object(code, message)
    return {"message": message, "type": "upstream_error", "param": None, "code": code}


def _learn_from(route: failover.Route, result: AttemptResult, request: Request) -> None:
    """What this attempt says about its upstream: the breaker, and where to start next."""
    breaker.record(
        route.upstream, result, now=timezone.now(), probe=route.probe, account=request.account
    )
    if result.outcome == Attempt.Outcome.SUCCESS:
        failover.remember_success(request.project, route.upstream.name)


def conclude_when_the_database_answers(request: Request, number: int, result, **options):
    """`conclude_attempt`, tried again while the database is unreachable: the upstream has
    answered (and may have charged for it), so its result is kept rather than lost and the
    call run a second time. The conclusion is fenced, so if the sweeper recovered the
    request meanwhile, this one changes nothing."""
    give_up_at = time.monotonic() + CONCLUSION_RETRY_SECONDS
    pause = 0.5
    while True:
        try:
            return conclude_attempt(request, number, result, **options)
        except Exception as error:
            # A read-only database (a failover) refuses the write as an InternalError.
            if not database_unavailable(error) or time.monotonic() + pause > give_up_at:
                raise
            logger.warning(
                "database unavailable; attempt result kept and retried",
                extra={
                    "request_id": request.public_id,
                    "exception": type(error).__name__,
                    "sqlstate": sqlstate(error),
                },
            )
            connection.close()  # a broken connection goes back to the pool to be dropped
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def record_own_error(
    request: Request,
    number: int,
    result: AttemptResult,
    error: Exception,
    *,
    unrecorded: str,
    **options,
) -> tuple[AttemptResult, float | None] | None:
    """`conclude_as_internal_error`, for the worker and the sweeper alike. If the database
    refuses that too (for a reason of this request's own, not an outage), None, logged as
    `unrecorded` by ids: the attempt stays open and the sweeper tries again once its lease
    runs out, rather than a failed task with its traceback or a sweep stopped at this
    request."""
    try:
        return conclude_as_internal_error(request, number, result, error, **options)
    except Exception as refused:
        if database_unavailable(refused):
            raise
        logger.error(
            unrecorded,
            extra={
                "request_id": request.public_id,
                "attempt": number,
                "exception": type(refused).__name__,
            },
        )
        return None


@contextmanager
def redis_outage_logged(request: Request, event: str):
    """A Redis outage inside ends the block as one warning, `event`, and nothing more: the
    slots are a limit, not a record, and PostgreSQL still has the request."""
    try:
        yield
    except Exception as error:
        if not is_redis_outage(error):
            raise
        logger.warning(
            event, extra={"request_id": request.public_id, "exception": type(error).__name__}
        )


def execute_request(request_pk: int) -> None:
    """`run_attempts`, for the worker's task. A database outage that outlasts the worker's
    wait (a connection from its pool within DB_POOL_TIMEOUT, or an attempt's result kept
    for CONCLUSION_RETRY_SECONDS) ends it with one warning, not as a failed task with its
    traceback: the request is in PostgreSQL, and the sweeper publishes it again, or
    recovers its attempt once its lease ends, when the database answers."""
    try:
        run_attempts(request_pk)
    except DatabaseError as error:
        if not is_outage(error):
            raise
        logger.warning(
            "request left for the sweeper: database unavailable",
            extra={
                "request_pk": request_pk,
                "exception": type(error).__name__,
                "sqlstate": sqlstate(error),
            },
        )


def run_attempts(request_pk: int) -> None:
    """Run attempts until the request finishes or waits longer than a worker should hold it.

    Each attempt first takes one of the account's concurrency slots; without one (none
    free, or a Redis that refuses the write) the request goes back to wait, so one tenant's
    backlog never holds a worker. A worker that is shutting down starts no further attempt.
    """
    while True:
        if shutdown.is_stopping():
            return  # SIGTERM: no new attempt here; the sweeper publishes it again
        found, enabled = together(
            (REQUEST_TO_RUN, {"pk": request_pk}),
            (failover.REQUESTS_UPSTREAMS, {"request_pk": request_pk}),
        )
        if not found:
            return  # deleted with its account
        row = found[0]
        if row.status not in (Status.QUEUED, Status.RETRYING):
            return  # finished, or another worker holds it
        if hold_if_suspended(row):
            return
        if expired_if_overdue(row, now=timezone.now()):
            return  # before waiting for a slot: the deadline does not wait for one
        lease = lease_for(row).total_seconds()
        limit = limits_for(row.account, preloaded=True).concurrency
        slot = concurrency.slot_token(request_pk)
        acquired = False  # none to be had from a Redis that cannot take the write either
        with redis_outage_logged(row, "concurrency slot not taken: Redis unavailable"):
            acquired = concurrency.acquire(
                account_id=row.account_id, token=slot, limit=limit, lease_seconds=lease
            )
        if not acquired:
            defer_for_capacity(request_pk)
            return
        held = concurrency.Held(row.account_id, slot)
        try:
            chain = failover.chain_of(row, enabled)
            route = failover.route(row, chain, now=timezone.now(), lease=lease_for(row))
            attempt = claim_request(row, upstream_name=route.upstream.name if route else "")
            if attempt is None:
                if route and route.probe:
                    breaker.release_probe(route.upstream)
                return
            result = perform_attempt(row, attempt, route, slot=slot)
            try:
                _, delay = conclude_when_the_database_answers(
                    row,
                    attempt.number,
                    result,
                    chain=chain,
                    latency_ms=attempt.latency_ms,
                    along=held.release,
                )
            except Exception as error:  # noqa: BLE001 - recorded as our own error below
                if database_unavailable(error):
                    raise  # for longer than a worker waits: the sweeper recovers the request
                # Not left running until its lease runs out.
                recorded = record_own_error(
                    row,
                    attempt.number,
                    result,
                    error,
                    unrecorded="attempt not recorded; left for the sweeper",
                    chain=chain,
                    along=held.release,
                )
                result, delay = recorded or (INTERNAL_ERROR, None)
            if route:
                _learn_from(route, result, row)
        finally:
            # Unless it went with the completion notice. One Redis cannot free now frees
            # itself when its lease ends.
            with redis_outage_logged(row, "concurrency slot not released: Redis unavailable"):
                held.release()
        if delay is None:
            return
        time.sleep(delay)
