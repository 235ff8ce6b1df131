"""Failover: which of the project's upstreams an attempt goes to, and where the next one goes.

A request tries its project's enabled upstreams in order (a *round*), starting at the
primary, or, when the project does not return to the primary, at the upstream the last
request succeeded on. An outcome the project's policy names (connection errors, timeouts,
5xx, 429 by default; answers no client can read when the project asks) moves the request
on to the next upstream at once, after `failover_tries_per_upstream` attempts on one
upstream (a final one, never retried, after the first); the retry backoff applies within
one upstream and between rounds, never between upstreams. A caller's own 4xx never moves
it. An upstream whose breaker is open is skipped without a call (`engine/breaker.py`).
The request's deadline and `max_attempts` bound the whole chain.

The upstream the next attempt is due on is part of the request's row (`next_upstream`,
`upstream_tries`), written in the same statement that concludes an attempt, so the worker
and the sweeper continue a chain alike. Docs: docs/failover.md.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Subquery

from core.prepared import PreparedGet
from projects.models import FailoverOn, Project, Upstream
from projects.selectors import enabled_upstreams
from requests_app.engine import breaker
from requests_app.engine.outcomes import AttemptResult
from requests_app.models import Attempt, Request

# Read before every attempt, with each upstream's breaker state: the one query that used
# to read the primary alone. By the request's id, so the worker sends it in the round trip
# that reads the request (executor.py).
REQUESTS_UPSTREAMS: PreparedGet[Upstream] = PreparedGet(
    lambda request_pk: enabled_upstreams(
        Subquery(Request.objects.filter(pk=request_pk).values("project_id"))
    ),
    request_pk=0,
)

# Results that say nothing about the upstream: moving elsewhere would not help.
STAYS_ON_FAULTS_OF_OURS = breaker.NOT_THE_UPSTREAMS_FAULT - {"worker_lost"}
# Answers no client can read (upstream.classify, stream_attempt.py): a wrong base URL or a
# captive proxy, cured by another upstream. Final: never retried on the one that gave them.
UNREADABLE_ANSWERS = frozenset(
    {
        "upstream_redirected",
        "upstream_unexpected_status",
        "upstream_not_json",
        "invalid_status",
        "invalid_event_stream",
    }
)


def chain_of(request: Request, enabled: list[Upstream] | None = None) -> list[Upstream]:
    """The upstreams `request` tries, in order: enabled, with a provider key, from the
    primary or (not returning to it) from where the project's last request succeeded.
    `enabled`: its project's enabled upstreams (REQUESTS_UPSTREAMS), when already read."""
    project = request.project
    if enabled is None:
        enabled = REQUESTS_UPSTREAMS.all(request_pk=request.pk)
    chain = [row for row in enabled if row.has_provider_key]
    for row in chain:
        row.project = project  # already loaded by the caller
    if not project.failover_return_to_primary and project.failover_current:
        names = [row.name for row in chain]
        if project.failover_current in names:
            start = names.index(project.failover_current)
            chain = chain[start:] + chain[:start]
    return chain


@dataclass(frozen=True)
class Route:
    """Where one attempt goes; `probe` when it is the half-open breaker's one test call."""

    upstream: Upstream
    probe: bool = False


def route(
    request: Request, chain: list[Upstream], *, now: datetime, lease: timedelta
) -> Route | None:
    """The upstream this attempt goes to: the one the request is due on, or the first after
    it whose breaker lets it through. With every breaker open, the one it is due on: a
    request is never failed without a call. None when no upstream can be called at all."""
    if not chain:
        return None
    names = [row.name for row in chain]
    start = names.index(request.next_upstream) if request.next_upstream in names else 0
    ordered = chain[start:] + chain[:start]
    for candidate in ordered:
        state = breaker.state_of(candidate, now)
        if state == breaker.CLOSED:
            return Route(candidate)
        if state == breaker.HALF_OPEN and breaker.take_probe(
            candidate, now=now, lease=lease, account=request.account
        ):
            return Route(candidate, probe=True)
    return Route(ordered[0])


def failover_kind(result: AttemptResult) -> str | None:
    """Which of the policy's outcomes this result is, if any."""
    if result.outcome == Attempt.Outcome.SUCCESS or result.error_code in STAYS_ON_FAULTS_OF_OURS:
        return None
    if result.status_code == 429:
        return FailoverOn.RATE_LIMITED
    if result.status_code is not None and result.status_code >= 500:
        return FailoverOn.SERVER_ERROR  # an invalid status of 600 or more too, as ever
    if result.error_code in UNREADABLE_ANSWERS:
        return FailoverOn.UNREADABLE
    if result.outcome == Attempt.Outcome.TIMEOUT:
        return FailoverOn.TIMEOUT
    if result.outcome == Attempt.Outcome.CONNECTION_ERROR:
        return FailoverOn.CONNECTION_ERROR
    return None  # the caller's own 4xx, or a fault no other upstream would cure


@dataclass(frozen=True)
class NextUpstream:
    """Where the request's next attempt is due, and whether it moved there in this round."""

    name: str
    tries: int  # attempts already made on it in this round
    moved: bool = False  # on to the next upstream: no backoff before the attempt


def next_upstream(
    project: Project, chain: list[Upstream], request: Request, result: AttemptResult
) -> NextUpstream:
    """After an attempt on `result.upstream` that did not succeed: the same upstream again,
    the next one in the chain, or (the round over) the first one after the backoff."""
    current = result.upstream or ""
    tries = (request.upstream_tries if request.next_upstream == current else 0) + 1
    names = [row.name for row in chain]
    kind = failover_kind(result)
    # An upstream whose provider key cannot be decrypted was not called: whatever the policy,
    # the request moves on, as it skips an upstream that has no key at all (`chain_of`).
    moves = result.key_unreadable or (kind is not None and kind in project.failover_on)
    if not moves or len(names) < 2:
        return NextUpstream(current, tries)
    # A final answer (`insufficient_quota`, an unreadable key) would only come again from the
    # same upstream: it moves on at once, whatever the tries per upstream.
    final = result.outcome == Attempt.Outcome.FATAL_ERROR
    if tries < project.failover_tries_per_upstream and not final:
        return NextUpstream(current, tries)
    position = names.index(current) if current in names else -1
    if position + 1 < len(names):
        return NextUpstream(names[position + 1], 0, moved=True)
    return NextUpstream(names[0], 0)


def remember_success(project: Project, upstream_name: str) -> None:
    """Off `failover_return_to_primary`, the next request starts where this one succeeded."""
    if project.failover_return_to_primary or project.failover_current == upstream_name:
        return
    Project.objects.filter(pk=project.pk).update(failover_current=upstream_name)
    project.failover_current = upstream_name
