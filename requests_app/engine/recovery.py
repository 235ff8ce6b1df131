"""The periodic sweep that makes Postgres, not Redis, the source of truth for pending work.

It dispatches retries whose backoff has elapsed, re-dispatches queued requests whose task
the broker may have lost (a Redis restart), and recovers requests whose worker died
mid-attempt (lease expired) by closing that attempt as `worker_lost` and retrying it, or,
when a stream had already sent bytes to a client, ending it with what the clients got.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

import httpx
import redis
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Q, Value
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils import timezone

from core import heartbeats
from core.outages import database_unavailable, is_redis_outage
from requests_app import metrics
from requests_app.engine import streams
from requests_app.engine.dispatch import oldest_waiting_request, publish_execute_request
from requests_app.engine.executor import conclude_attempt, record_own_error
from requests_app.engine.outcomes import AttemptResult, UpstreamResponse
from requests_app.engine.stream_attempt import as_relayed
from requests_app.models import Attempt, Request, Status

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass
class SweepReport:
    dispatched: int = 0
    recovered: int = 0


def _dispatch(pks: list[int]) -> int:
    """Publish `pks` again. Only a publish Redis took is recorded: one it refused (an
    outage) leaves them due, for the next sweep, rather than waiting out a redispatch."""
    now = timezone.now()
    publish_execute_request(*pks)
    Request.objects.filter(pk__in=pks).update(dispatched_at=now)
    return len(pks)


def lost_attempt(request: Request, *, upstream: str | None) -> AttemptResult:
    """The result of an attempt whose worker vanished. Before any byte reached a client it
    is a connection error, retried. After, the request can only end with what its readers
    got: the upstream's answer if its end had been relayed (the worker died before recording
    it), else a partial failure keeping the bytes delivered (`as_relayed`, as the worker
    itself decides a failure after the end). Bytes no key in the ring opens (logged by
    `relayed_by`) are as good as lost: a partial failure with nothing to show."""
    lost = AttemptResult(
        Attempt.Outcome.CONNECTION_ERROR,
        error_code="worker_lost",
        stream_started=request.first_byte_at is not None,
        upstream=upstream,
    )
    if request.first_byte_at is None:
        return lost
    try:
        relayed = streams.relayed_by(request.public_id, request.attempt_count)
    except redis.RedisError:
        return lost  # Redis lost it too: a partial failure, with nothing to show
    if relayed is None or relayed.body is None:
        return lost
    lost.status_code = 200
    lost.response = UpstreamResponse(200, relayed.headers, relayed.body, httpx.Headers())
    return as_relayed(lost, request.endpoint)


def recover_expired_leases(now) -> int:
    """Requests whose worker vanished mid-attempt: close the attempt and schedule a retry."""
    stale = list(
        Request.objects.select_related("project", "account")
        .filter(status=Status.RUNNING, lease_until__lt=now)
        .order_by("lease_until")[:BATCH_SIZE]
    )
    # Where each lost attempt had gone: its request fails over from there.
    sent_to = dict(
        Attempt.objects.filter(request__in=stale, number=F("request__attempt_count")).values_list(
            "request_id", "upstream"
        )
    )
    recovered = 0
    for request in stale:
        if _recover(request, upstream=sent_to.get(request.pk), now=now):
            recovered += 1
            logger.warning(
                "lease expired; attempt recovered",
                extra={"request_id": request.public_id, "attempt": request.attempt_count},
            )
    return recovered


def _recover(request: Request, *, upstream: str | None, now) -> bool:
    """Record `request`'s lost attempt; False if not even our own error could be written.

    A failure of this request alone (a value the database refuses, an answer shaped like
    nothing foreseen) must neither leave it running nor stop the sweep from reaching the
    requests after it: it is recorded as our own error, and if that is refused too, logged
    and tried again by the next sweep. A database that is away stops the sweep: the next
    one recovers it once the database answers."""
    number = request.attempt_count
    try:
        # The same one statement as the worker's own conclusion: if the worker recorded
        # its result first, or renewed its lease meanwhile, this changes nothing.
        conclude_attempt(
            request, number, lost_attempt(request, upstream=upstream), lease_expired_before=now
        )
        return True
    except Exception as error:
        if database_unavailable(error):
            raise
        failure = error
    recorded = record_own_error(
        request,
        number,
        AttemptResult(
            Attempt.Outcome.CONNECTION_ERROR,
            stream_started=request.first_byte_at is not None,
            upstream=upstream,
        ),
        failure,
        unrecorded="lost attempt not recorded",
        lease_expired_before=now,
    )
    return recorded is not None


# A published task that no worker has claimed may have been lost (a Redis restart, a worker
# killed holding it). It is published again after the time it had waited before its last
# publish, at least REDISPATCH_MIN and at most REDISPATCH_MAX: a lost message costs seconds,
# while work merely waiting behind a busy pool is not flooded with duplicates. Nor is work
# whose message is still in the queue (`taken_from_queue_before`).
REDISPATCH_MIN = timedelta(seconds=10)
REDISPATCH_MAX = timedelta(minutes=5)


def _redispatch_at():
    waited = ExpressionWrapper(
        F("dispatched_at") - Coalesce(F("next_attempt_at"), F("created_at")),
        output_field=DurationField(),
    )
    patience = Greatest(
        Value(REDISPATCH_MIN), Least(waited, Value(REDISPATCH_MAX)), output_field=DurationField()
    )
    return ExpressionWrapper(F("dispatched_at") + patience, output_field=DateTimeField())


def taken_from_queue_before():
    """A time before which every request's last message has left the broker's queue: when
    the request named by the oldest message still waiting was last published. Messages
    leave oldest first, so a request published before that and still unclaimed has no
    message left to wait for, while one published since may simply be waiting its turn in
    a backlog. None when the queue is empty (every message has left it) or that request is
    gone.

    A request published again since its message was queued only moves the time later: some
    messages still waiting may then be published once more, as before; none lost is missed.
    """
    oldest = oldest_waiting_request()
    if oldest is None:
        return None
    return Request.objects.filter(pk=oldest).values_list("dispatched_at", flat=True).first()


def sweep() -> SweepReport:
    now = timezone.now()
    report = SweepReport(recovered=recover_expired_leases(now))
    due_now = Q(next_attempt_at__lte=now) & (
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=F("next_attempt_at"))
    )
    unclaimed = Q(redispatch_at__lt=now) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    try:
        still_queued_after = taken_from_queue_before()
        if still_queued_after is not None:
            unclaimed &= Q(dispatched_at__lt=still_queued_after)
        due = (
            Request.objects.filter(status__in=[Status.QUEUED, Status.RETRYING])
            .annotate(redispatch_at=_redispatch_at())
            .filter(due_now | unclaimed)
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:BATCH_SIZE]
        )
        report.dispatched = _dispatch(list(due))
        heartbeats.record(heartbeats.SWEEPER)  # /readyz: 503 when this stops
    except Exception as error:
        if not is_redis_outage(error):
            raise
        # Down, full or read-only: /readyz says so, and what is due stays due.
        logger.warning(
            "sweep incomplete: Redis unavailable", extra={"exception": type(error).__name__}
        )
    if report.dispatched or report.recovered:
        logger.info("sweep", extra={"dispatched": report.dispatched, "recovered": report.recovered})
    metrics.swept(started=now, dispatched=report.dispatched, recovered=report.recovered)
    return report
