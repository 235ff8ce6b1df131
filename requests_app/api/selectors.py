"""Reads of request records, always scoped to a project or to a user's memberships."""

from datetime import UTC, datetime

from django.db.models import QuerySet

from accounts.models import User
from core.endpoints import PROXIED_ENDPOINTS
from core.ids import is_id_of
from core.untrusted import whole_number
from projects.models import Project
from requests_app.errors import InvalidRequest, NotFound
from requests_app.models import Request, Status

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a date can hold


def requests_of(project: Project) -> QuerySet[Request]:
    return (
        Request.objects.filter(project=project)
        .select_related("project")
        .prefetch_related("attempts")
    )


def requests_visible_to(user: User) -> QuerySet[Request]:
    return (
        Request.objects.filter(account__memberships__user=user)
        .select_related("project")
        .prefetch_related("attempts")
    )


def request_in_project(project: Project, public_id: str) -> Request:
    request = requests_of(project).filter(public_id=public_id).first()
    if request is None:
        raise NotFound(f"No request with id {public_id!r} in this project.", param="id")
    return request


def _whole_number(params, name: str, *, minimum: int, maximum: int) -> int:
    number = whole_number(params[name], minimum=minimum, maximum=maximum)
    if number is None:
        raise InvalidRequest(
            f"'{name}' must be a whole number from {minimum} to {maximum}.", param=name
        )
    return number


def _text(params, name: str) -> str:
    """A text filter; PostgreSQL text cannot hold NUL, so one is refused up front."""
    value = params[name]
    if "\x00" in value:
        raise InvalidRequest(f"'{name}' must not contain a NUL character.", param=name)
    return value


def list_requests(project: Project, params) -> tuple[list[Request], bool]:
    """Newest first, cursor-paginated by id (ids sort by creation time)."""
    limit = DEFAULT_PAGE
    if "limit" in params:
        limit = _whole_number(params, "limit", minimum=1, maximum=MAX_PAGE)
    requests = requests_of(project).order_by("-public_id")
    status = params.get("status")
    if status:
        if status not in Status.values:
            raise InvalidRequest(
                f"Unknown status {status!r}; use one of {', '.join(Status.values)}.", param="status"
            )
        requests = requests.filter(status=status)
    endpoint = params.get("endpoint")
    if endpoint:
        if endpoint not in PROXIED_ENDPOINTS:
            raise InvalidRequest(
                f"Unknown endpoint {endpoint!r}; use one of {', '.join(PROXIED_ENDPOINTS)}.",
                param="endpoint",
            )
        requests = requests.filter(endpoint=endpoint)
    if params.get("idempotency_key"):
        requests = requests.filter(idempotency_key=_text(params, "idempotency_key"))
    if params.get("created_after"):
        seconds = _whole_number(params, "created_after", minimum=0, maximum=MAX_TIMESTAMP)
        requests = requests.filter(created_at__gt=datetime.fromtimestamp(seconds, tz=UTC))
    if params.get("after"):
        after = params["after"]
        if not is_id_of("req", after):
            raise InvalidRequest(
                "'after' must be a request id (req_ and 28 hex digits): the id of the last"
                " request of the page already read (`last_id`).",
                param="after",
            )
        requests = requests.filter(public_id__lt=after)
    page = list(requests[: limit + 1])
    return page[:limit], len(page) > limit


def usage_report(account) -> dict:
    """The account's plan, limits and this period's use, for GET /v1/usage."""
    from projects.limits import (
        accepted_requests,
        current_period_start,
        limits_for,
        next_period_start,
    )

    limits = limits_for(account)
    period = current_period_start()
    period_end = next_period_start(period)
    return {
        "object": "usage",
        "plan": limits.plan_code,
        "period_start": int(datetime(period.year, period.month, 1, tzinfo=UTC).timestamp()),
        "period_end": int(datetime(period_end.year, period_end.month, 1, tzinfo=UTC).timestamp()),
        "limits": limits.as_dict(),
        "used": {
            "accepted_requests": accepted_requests(account, period),
            "pending": Request.objects.filter(
                account=account, status__in=[Status.QUEUED, Status.RUNNING, Status.RETRYING]
            ).count(),
            "projects": account.projects.not_deleted().count(),
        },
    }
