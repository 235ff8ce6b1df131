"""Keeping data only as long as promised (PRODUCT §8).

- request bodies: dropped when the request ends (the executor does it);
- response bodies: kept 24 h after the end for replay and status, then dropped;
  with zero retention, dropped once delivered (wait mode: to the last caller waiting on
  it) or first fetched (async);
- request and attempt records: kept for the plan's retention window, then deleted; their
  per-day counts (requests, tokens, succeeded, failed) stay in DailyUsage for the usage page.
Everything runs in small batches so no statement holds locks for long.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, timedelta

from django.db.models import BigIntegerField, BinaryField, Case, F, Value, When
from django.db.models.functions import Greatest, TruncDate
from django.utils import timezone

from accounts.models import Account
from core import encryption
from core.batches import delete_in_batches
from core.outages import database_unavailable
from projects.limits import limits_for
from requests_app.engine.usage import REQUEST_TOTALS
from requests_app.models import TERMINAL_STATUSES, DailyUsage, Request

logger = logging.getLogger(__name__)

BATCH_SIZE = 1000


@dataclass
class PurgeReport:
    response_bodies: int = 0
    records: int = 0


def purge_expired_response_bodies(now=None) -> int:
    now = now or timezone.now()
    purged = 0
    while True:
        pks = list(
            Request.objects.filter(
                response_expires_at__lt=now, response_body__isnull=False
            ).values_list("pk", flat=True)[:BATCH_SIZE]
        )
        if not pks:
            return purged
        purged += Request.objects.filter(pk__in=pks).update(response_body=None)


def purge_expired_records(account: Account, now=None) -> int:
    """Delete this account's finished requests (and their attempts) past its retention window."""
    cutoff = (now or timezone.now()) - timedelta(days=limits_for(account).retention_days)
    expired = Request.objects.filter(
        account=account, created_at__lt=cutoff, status__in=TERMINAL_STATUSES
    )
    # Skipped by a purge running at the same time (a long run overlaps the next one beat
    # sends): each request's totals are kept once, by one of them.
    return delete_in_batches(
        expired, batch_size=BATCH_SIZE, skip_locked=True, before_delete=keep_daily_totals
    )


def keep_daily_totals(requests) -> None:
    """Add these requests to their project's DailyUsage rows before they are deleted."""
    groups = (
        requests.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("account_id", "project_id", "day")
        .annotate(**REQUEST_TOTALS)
    )
    for group in groups:
        row, _ = DailyUsage.objects.get_or_create(
            project_id=group["project_id"],
            day=group["day"],
            defaults={"account_id": group["account_id"]},
        )
        # Typed: a bare Python int is sent as a 32-bit integer, and a day's tokens pass that.
        DailyUsage.objects.filter(pk=row.pk).update(
            **{name: F(name) + Value(group[name], BigIntegerField()) for name in REQUEST_TOTALS}
        )


def purge_expired_data(now=None) -> PurgeReport:
    report = PurgeReport(response_bodies=purge_expired_response_bodies(now))
    # Every account: each one's purge is a read of the (account, created_at) index, where
    # finding the accounts that have requests would read every request.
    for account in Account.objects.order_by("pk").iterator():
        report.records += purge_expired_records(account, now)
    logger.info(
        "retention purge",
        extra={"response_bodies": report.response_bodies, "records": report.records},
    )
    return report


def response_is_retained(request: Request) -> bool:
    """The stored answer may still be shown: its 24 hours are not over, whether or not the
    purge has come round to drop it yet."""
    return request.response_body is not None and (
        request.response_expires_at is None or request.response_expires_at > timezone.now()
    )


def stored_response_body(request: Request) -> bytes | None:
    """The stored answer, decrypted; None when none is stored, or when the encryption keys
    no longer open it (then shown as if it had expired)."""
    if request.response_body is None:
        return None
    return encryption.decrypt_stored(
        request.response_body, request_id=request.public_id, stored="response_body"
    )


def owe_answer(request_pk: int) -> bool:
    """Zero retention: count a caller attaching to a request among those owed its answer.

    Only while the request runs, in one statement that the conclusion's UPDATE serialises
    with: False if it ended first (the caller then gets a replay, like any later one)."""
    return bool(
        Request.objects.filter(pk=request_pk)
        .exclude(status__in=TERMINAL_STATUSES)
        .update(owed_deliveries=F("owed_deliveries") + 1)
    )


def release_answer(request: Request) -> None:
    """Zero retention: an owed caller left without the answer (its 202, a hang-up) or has
    it through a stream's relay instead of the record. Unless another caller is still owed
    it, the answer then stays until fetched once, as an async request's does. In an outage the count
    stays as it was: that only keeps the answer until fetched or its 24 hours end."""
    try:
        Request.objects.filter(pk=request.pk).update(
            owed_deliveries=Greatest(F("owed_deliveries") - 1, 0)
        )
    except Exception as error:
        if not database_unavailable(error):  # a read-only database refuses as InternalError
            raise
        logger.warning(
            "caller leaving without its answer not counted",
            extra={"request_id": request.public_id, "exception": type(error).__name__},
        )


def forget_delivered_response(request: Request, *, owed: bool = False) -> None:
    """Zero retention: once the answer has reached the client, keep no copy of it. An
    `owed` caller (one counted by `owe_answer` or at creation) settles its debt, and the
    last one to do so forgets the answer; any other delivery forgets it only when no
    waiting caller is still owed it."""
    if not owed:
        forget_shown_responses([request])
    elif request.project.zero_retention:
        Request.objects.filter(pk=request.pk).update(
            owed_deliveries=Greatest(F("owed_deliveries") - 1, 0),
            # Both read the row as it was: the last debt's delivery forgets the answer.
            response_body=Case(
                When(owed_deliveries__lte=1, then=Value(None)),
                default=F("response_body"),
                output_field=BinaryField(),
            ),
        )


def forget_shown_responses(requests) -> None:
    """Zero retention: answers just shown (API, list, dashboard) are not kept past it,
    unless a waiting caller is still owed one."""
    shown = [
        request.pk
        for request in requests
        if request.project.zero_retention
        and request.is_terminal
        and request.response_body is not None
    ]
    if shown:
        Request.objects.filter(pk__in=shown, owed_deliveries=0).update(response_body=None)
