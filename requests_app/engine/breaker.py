"""Each upstream's circuit breaker, one state for every web, worker and beat process.

The state is on the upstream's own row (`projects.Upstream.breaker_*`), which the engine
reads before every attempt anyway, so a closed breaker costs nothing: no extra query, no
write on success. Failures are counted in that row within a fixed window; the statement
that crosses the threshold opens the breaker, so exactly one process opens it.

    closed ──(REQRUN_BREAKER_FAILURES failures within the window)──► open
    open ──(cooldown elapsed)──► half-open: one attempt at a time is let through (the probe)
    half-open ──(the probe succeeds)──► closed
    half-open ──(the probe fails)──► open again, for twice the last cooldown (up to the max)

PostgreSQL is the truth, so a restarted Redis or process forgets nothing. Every change of
state is an audit event of the project's account, a log line and a metric.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from accounts.models import Account
from accounts.services import record_audit_event
from projects.models import Upstream
from requests_app import metrics
from requests_app.engine.outcomes import AttemptResult
from requests_app.models import Attempt

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# Faults of ReqRun's own (or of the request, not the upstream) never count against it.
NOT_THE_UPSTREAMS_FAULT = frozenset(
    {
        "worker_lost",
        "lease_lost",
        "redis_unavailable",
        "client_disconnected",
        "deadline_exceeded",
        "internal_error",
    }
)


def state_of(upstream: Upstream, now: datetime) -> str:
    if upstream.breaker_open_until is None:
        return CLOSED
    return OPEN if upstream.breaker_open_until > now else HALF_OPEN


def counts_against(result: AttemptResult) -> bool:
    """Is this result a sign that the upstream is unwell? Connection errors and timeouts of
    its own, 5xx and 429 answers; never a success or the caller's own 4xx."""
    if result.error_code in NOT_THE_UPSTREAMS_FAULT:
        return False
    if result.outcome in (Attempt.Outcome.CONNECTION_ERROR, Attempt.Outcome.TIMEOUT):
        return True
    return result.status_code is not None and (
        result.status_code >= 500 or result.status_code == 429
    )


def _run(sql: str, params: dict) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


TAKE_PROBE = """
UPDATE projects_upstream SET breaker_probe_until = %(probe_until)s
WHERE id = %(id)s AND breaker_open_until <= %(now)s
    AND (breaker_probe_until IS NULL OR breaker_probe_until < %(now)s)
RETURNING id
"""


def take_probe(upstream: Upstream, *, now: datetime, lease: timedelta, account: Account) -> bool:
    """For a half-open breaker: make this attempt the one probe in flight, if none is.

    The probe is held for `lease` (the attempt's own lease), so a probe whose worker died
    is given to another attempt afterwards."""
    taken = _change(
        TAKE_PROBE,
        {"id": upstream.pk, "now": now, "probe_until": now + lease},
        upstream=upstream,
        account=account,
        state=HALF_OPEN,
        why=lambda row: "one probe let through",
    )
    return bool(taken)


RENEW_PROBE = """
UPDATE projects_upstream SET breaker_probe_until = %(probe_until)s
WHERE id = %(id)s AND breaker_open_until <= %(now)s AND breaker_probe_until IS NOT NULL
RETURNING id
"""


def renew_probe(upstream: Upstream, *, now: datetime, lease: timedelta) -> None:
    """Hold a probe that is still running for another `lease`: a streamed probe outlasts the
    lease it was taken for, and a second probe must not start while it streams. Renewed with
    its attempt's lease (stream_attempt.py), so a probe whose worker died is let go as one
    that was never renewed; nothing changes once the breaker has closed or opened again."""
    _run(RENEW_PROBE, {"id": upstream.pk, "now": now, "probe_until": now + lease})


def release_probe(upstream: Upstream) -> None:
    """A probe taken for an attempt that then did not start: let the next one probe."""
    _run(
        "UPDATE projects_upstream SET breaker_probe_until = NULL WHERE id = %(id)s RETURNING id",
        {"id": upstream.pk},
    )


COUNT_FAILURE = """
UPDATE projects_upstream SET
    breaker_failures =
        CASE WHEN breaker_window_started > %(window_start)s THEN breaker_failures + 1 ELSE 1 END,
    breaker_window_started =
        CASE WHEN breaker_window_started > %(window_start)s THEN breaker_window_started
        ELSE %(now)s END
WHERE id = %(id)s AND breaker_open_until IS NULL
RETURNING breaker_failures
"""

OPEN_BREAKER = """
UPDATE projects_upstream SET breaker_opened_at = %(now)s, breaker_open_until = %(until)s,
    breaker_probe_until = NULL, breaker_failures = 0, breaker_window_started = NULL
WHERE id = %(id)s AND breaker_open_until IS NULL
RETURNING id
"""

# A failed probe: open again for twice the cooldown that just ended, within [base, max].
REOPEN_BREAKER = """
UPDATE projects_upstream SET breaker_opened_at = %(now)s,
    breaker_open_until = %(now)s + LEAST(%(max)s, GREATEST(%(base)s,
        2 * (breaker_open_until - breaker_opened_at))),
    breaker_probe_until = NULL
WHERE id = %(id)s AND breaker_open_until <= %(now)s
RETURNING breaker_open_until - %(now)s
"""

CLOSE_BREAKER = """
UPDATE projects_upstream SET breaker_opened_at = NULL, breaker_open_until = NULL,
    breaker_probe_until = NULL, breaker_failures = 0, breaker_window_started = NULL
WHERE id = %(id)s AND breaker_open_until IS NOT NULL
RETURNING id
"""


def record(
    upstream: Upstream, result: AttemptResult, *, now: datetime, probe: bool, account: Account
) -> None:
    """Count one attempt's result against `upstream`'s breaker (read when it was chosen)."""
    if result.outcome == Attempt.Outcome.SUCCESS:
        # Only a breaker that was not closed has anything to undo: no write otherwise.
        if upstream.breaker_open_until is not None:
            _change(
                CLOSE_BREAKER,
                {"id": upstream.pk},
                upstream=upstream,
                account=account,
                state=CLOSED,
                why=lambda row: "the upstream answered again",
            )
        return
    if not counts_against(result):
        if probe:
            # Neither way (the caller's own 4xx, a fault of ours): the breaker stays half-open
            # and the next attempt probes, rather than skip the upstream for a whole lease.
            release_probe(upstream)
        return
    if probe or upstream.breaker_open_until is not None:
        _change(
            REOPEN_BREAKER,
            {
                "id": upstream.pk,
                "now": now,
                "base": timedelta(seconds=settings.REQRUN_BREAKER_COOLDOWN_SECONDS),
                "max": timedelta(seconds=settings.REQRUN_BREAKER_COOLDOWN_MAX_SECONDS),
            },
            upstream=upstream,
            account=account,
            state=OPEN,
            why=lambda row: f"the probe failed; open for {row[0]}",
        )
        return
    window_start = now - timedelta(seconds=settings.REQRUN_BREAKER_WINDOW_SECONDS)
    counted = _run(COUNT_FAILURE, {"id": upstream.pk, "now": now, "window_start": window_start})
    if counted is None or counted[0] < settings.REQRUN_BREAKER_FAILURES:
        return
    cooldown = timedelta(seconds=settings.REQRUN_BREAKER_COOLDOWN_SECONDS)
    _change(
        OPEN_BREAKER,
        {"id": upstream.pk, "now": now, "until": now + cooldown},
        upstream=upstream,
        account=account,
        state=OPEN,
        why=lambda row: (
            f"{counted[0]} failures within {settings.REQRUN_BREAKER_WINDOW_SECONDS} "
            f"s; open for {cooldown}"
        ),
    )


def _change(
    sql: str,
    params: dict,
    *,
    upstream: Upstream,
    account: Account,
    state: str,
    why: Callable[[tuple], str],
) -> tuple | None:
    """Run a statement that moves the breaker to `state` and, if it did (a row came back),
    record the owners' audit event in the same transaction, so no change of state is left
    without its event (a worker lost between two separate writes could)."""
    with transaction.atomic():
        row = _run(sql, params)
        if row:
            record_audit_event(
                account=account,
                actor=None,
                action=f"upstream_breaker_{state}",
                target=f"{upstream.project.public_id} {upstream.name}: {why(row)}"[:200],
            )
    if row:
        logger.warning(
            "upstream breaker changed",
            extra={
                "project_id": upstream.project.public_id,
                "upstream": upstream.name,
                "breaker": state,
            },
        )
        metrics.breaker_changed(state)
    return row
