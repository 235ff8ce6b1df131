"""Reads for the dashboard's request pages, usage page and upstream health, scoped to the
user's memberships.

The requests list pages by keyset on `public_id` (ids sort by creation time), so a page
costs one index range scan whatever the table's size: no OFFSET and no COUNT(*).
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.db.models import Aggregate, Count, FloatField, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Account, User
from core import encryption
from core.untrusted import parse_json_to_keep
from projects.limits import (
    accepted_requests,
    current_period_start,
    limits_for,
    next_period_start,
    quota_percent,
)
from projects.models import DEADLINE_MAX_SECONDS, Project
from requests_app.engine import breaker
from requests_app.engine.usage import REQUEST_TOTALS, TOKENS
from requests_app.models import Attempt, DailyUsage, Request

PAGE_SIZE = 50
# A body larger than this is cut on the detail page; the API returns it whole.
BODY_DISPLAY_LIMIT = 64 * 1024
LIST_COLUMNS = (
    "public_id",
    "status",
    "endpoint",
    "model",
    "stream",
    "idempotency_key",
    "attempt_count",
    "created_at",
    "started_at",
    "finished_at",
    "response_status_code",
    "partial",
)


def request_for_user(user: User, public_id: str) -> QuerySet[Request]:
    """The request with that id if the user is a member of its account (else empty)."""
    return (
        Request.objects.filter(
            account__memberships__user=user, public_id=public_id, project__deleted_at__isnull=True
        )
        .select_related("project", "project__account")
        .prefetch_related("attempts")
    )


@dataclass
class RequestPage:
    requests: list[Request]
    newer: str | None = None  # cursor for ?before= (the first row shown), if newer rows exist
    older: str | None = None  # cursor for ?after= (the last row shown), if older rows exist


def filtered_requests(
    project: Project, *, status: str = "", endpoint: str = "", search: str = ""
) -> QuerySet[Request]:
    requests = Request.objects.filter(project=project).only(*LIST_COLUMNS)
    if status:
        requests = requests.filter(status=status)
    if endpoint:
        requests = requests.filter(endpoint=endpoint)
    if search:
        requests = requests.filter(Q(public_id=search) | Q(idempotency_key=search))
    return requests


def request_page(
    requests: QuerySet[Request], *, after: str = "", before: str = "", size: int = PAGE_SIZE
) -> RequestPage:
    """One page, newest first: older than `after`, or newer than `before`, or the newest."""
    if before:
        rows = list(requests.filter(public_id__gt=before).order_by("public_id")[: size + 1])
        more_newer = len(rows) > size
        rows = rows[:size][::-1]
        more_older = requests.filter(public_id__lte=before).exists()
    else:
        window = requests.filter(public_id__lt=after) if after else requests
        rows = list(window.order_by("-public_id")[: size + 1])
        more_older = len(rows) > size
        rows = rows[:size]
        more_newer = bool(after) and requests.filter(public_id__gte=after).exists()
    if not rows:
        return RequestPage(requests=[])
    return RequestPage(
        requests=rows,
        newer=rows[0].public_id if more_newer else None,
        older=rows[-1].public_id if more_older else None,
    )


def has_requests(project: Project) -> bool:
    return Request.objects.filter(project=project).exists()


# ----- one request -------------------------------------------------------------------


@dataclass
class Body:
    """A stored body as the detail page shows it: pretty JSON, or text, possibly cut; or
    `unreadable` when the encryption keys no longer open it."""

    text: str
    is_json: bool
    truncated: bool
    unreadable: bool = False


def readable_body(
    encrypted: bytes | memoryview | None, *, request_id: str, stored: str
) -> Body | None:
    if encrypted is None:
        return None
    raw = encryption.decrypt_stored(encrypted, request_id=request_id, stored=stored)
    if raw is None:
        return Body(text="", is_json=False, truncated=False, unreadable=True)
    try:
        text, is_json = json.dumps(parse_json_to_keep(raw), indent=2, ensure_ascii=False), True
    except (ValueError, RecursionError):  # not JSON we can show; too deep to indent
        text, is_json = raw.decode(errors="replace"), False
    truncated = len(text) > BODY_DISPLAY_LIMIT
    return Body(text=text[:BODY_DISPLAY_LIMIT], is_json=is_json, truncated=truncated)


@dataclass
class TimelineEntry:
    attempt: object
    backoff_ms: int | None  # time waited since the previous attempt ended
    asked_ms: int | None  # the wait the previous attempt's upstream answer asked for
    failed_over: bool = False  # sent to another upstream than the previous attempt


def attempt_timeline(request: Request) -> list[TimelineEntry]:
    entries, previous = [], None
    for attempt in request.attempts_as_read():
        backoff = asked = None
        if previous is not None and previous.finished_at and attempt.started_at:
            waited = (attempt.started_at - previous.finished_at).total_seconds()
            backoff, asked = max(0, int(waited * 1000)), previous.retry_after_ms
        moved = previous is not None and attempt.upstream != previous.upstream
        entries.append(
            TimelineEntry(attempt=attempt, backoff_ms=backoff, asked_ms=asked, failed_over=moved)
        )
        previous = attempt
    return entries


# ----- upstream health ---------------------------------------------------------------

HEALTH_WINDOW = timedelta(hours=1)
# No attempt starts later than a request's deadline, which is at most this long after its
# acceptance: bounding the requests' `created_at` too lets the health query walk the
# (account, created_at) index instead of every request the project ever had.
LONGEST_DEADLINE = timedelta(seconds=DEADLINE_MAX_SECONDS)


class Median(Aggregate):
    """PostgreSQL's continuous median, interpolated between the two middle values."""

    function = "percentile_cont"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


@dataclass(frozen=True)
class UpstreamHealth:
    """One upstream's breaker now and its finished attempts over the last hour."""

    name: str
    breaker: str  # breaker.CLOSED, OPEN or HALF_OPEN
    open_until: datetime | None = None
    attempts: int = 0
    successes: int = 0
    p50_ms: int | None = None

    @property
    def success_percent(self) -> float | None:
        return 100 * self.successes / self.attempts if self.attempts else None


def upstream_health(project: Project, *, now: datetime | None = None) -> dict[str, UpstreamHealth]:
    """Each of the project's upstreams by name: its breaker state, and the count, success
    rate and median latency of the attempts sent to it that started within the last hour
    and have finished. Two queries whatever the number of upstreams."""
    now = now or timezone.now()
    since = now - HEALTH_WINDOW
    upstreams = list(
        project.upstreams.order_by("position", "pk").only(
            "name", "breaker_open_until", "project_id"
        )
    )
    rows = (
        Attempt.objects.filter(
            request__account_id=project.account_id,
            request__created_at__gte=since - LONGEST_DEADLINE,
            request__project_id=project.pk,
            started_at__gte=since,
            upstream__in=[upstream.name for upstream in upstreams],
        )
        .exclude(outcome="")  # still in flight
        .values("upstream")
        .annotate(
            attempts=Count("pk"),
            successes=Count("pk", filter=Q(outcome=Attempt.Outcome.SUCCESS)),
            p50_ms=Median("latency_ms"),
        )
        .order_by("upstream")
    )
    stats = {row.pop("upstream"): row for row in rows}
    health = {}
    for upstream in upstreams:
        row = stats.get(upstream.name, {})
        p50 = row.get("p50_ms")
        health[upstream.name] = UpstreamHealth(
            name=upstream.name,
            breaker=breaker.state_of(upstream, now),
            open_until=upstream.breaker_open_until,
            attempts=row.get("attempts", 0),
            successes=row.get("successes", 0),
            p50_ms=None if p50 is None else round(p50),
        )
    return health


# ----- usage -------------------------------------------------------------------------


@dataclass
class Day:
    day: date
    requests: int = 0
    tokens: int = 0


@dataclass
class UsageReport:
    period_start: date
    period_end: date  # exclusive: the day the quota resets
    days: list[Day]
    projects: list[dict]
    accepted_requests: int
    monthly_limit: int
    plan_name: str
    retention_days: int
    totals: dict = field(default_factory=dict)

    @property
    def percent(self) -> int:
        return quota_percent(used=self.accepted_requests, quota=self.monthly_limit)


def _period_bounds(period_start: date) -> tuple[datetime, datetime, date]:
    period_end = next_period_start(period_start)
    start = datetime(period_start.year, period_start.month, period_start.day, tzinfo=UTC)
    end = datetime(period_end.year, period_end.month, period_end.day, tzinfo=UTC)
    return start, end, period_end


def usage_report(account: Account) -> UsageReport:
    """This period's requests and tokens per day and per project.

    Days whose request records are still kept are counted from the rows; days already past
    the plan's retention window from the DailyUsage totals the purge kept for them (the
    purge moves a row's counts there in the transaction that deletes it, so nothing is
    counted twice). The quota figure comes from the monthly counter.
    """
    period_start = current_period_start()
    start, end, period_end = _period_bounds(period_start)
    # A deleted project's requests and totals go with it, at once, though a worker deletes
    # their rows later.
    in_period = Request.objects.filter(
        account=account, created_at__gte=start, created_at__lt=end, project__deleted_at__isnull=True
    )
    kept = DailyUsage.objects.filter(
        account=account,
        day__gte=period_start,
        day__lt=period_end,
        project__deleted_at__isnull=True,
    )
    per_day: dict[date, Day] = {}
    rows = [
        *in_period.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(requests=Count("pk"), tokens=TOKENS),
        *kept.values("day").annotate(requests=Sum("requests"), tokens=Sum("tokens")),
    ]
    for row in rows:
        day = per_day.setdefault(row["day"], Day(day=row["day"]))
        day.requests += row["requests"]
        day.tokens += row["tokens"]
    days = []
    day = period_start
    while day < period_end:
        days.append(per_day.get(day, Day(day=day)))
        day += timedelta(days=1)
    per_project: dict[str, dict] = {}
    rows = [
        *in_period.values("project__public_id", "project__name").annotate(**REQUEST_TOTALS),
        *kept.values("project__public_id", "project__name").annotate(
            **{name: Sum(name) for name in REQUEST_TOTALS}
        ),
    ]
    for row in rows:
        totals = per_project.setdefault(
            row["project__public_id"], {**row, **dict.fromkeys(REQUEST_TOTALS, 0)}
        )
        for name in REQUEST_TOTALS:
            totals[name] += row[name]
    projects = sorted(
        per_project.values(), key=lambda project: (-project["requests"], project["project__name"])
    )
    limits = limits_for(account)
    return UsageReport(
        period_start=period_start,
        period_end=period_end,
        days=days,
        projects=projects,
        accepted_requests=accepted_requests(account, period_start),
        monthly_limit=limits.monthly_requests,
        plan_name=limits.plan_name,
        retention_days=limits.retention_days,
        totals={
            "requests": sum(d.requests for d in days),
            "tokens": sum(d.tokens for d in days),
            "unreported": sum(project["unreported"] for project in projects),
        },
    )
