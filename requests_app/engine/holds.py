"""Keeping a request waiting without running it: held while its account or project is
suspended, deferred while its account has no free concurrency slot. Neither changes its
status; the sweeper dispatches it again when `next_attempt_at` comes."""

import random
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from projects.suspension import SUSPENSION_CANCEL_AFTER_DAYS
from requests_app.engine.cancel import cancel_waiting
from requests_app.error_catalog import error_object
from requests_app.models import Request, Status

CAPACITY_RETRY_SECONDS = 1.0
SUSPENSION_RECHECK = timedelta(seconds=30)


def hold_if_suspended(request: Request) -> bool:
    """An operator's suspension holds the account's queued work: nothing is sent upstream,
    the request is looked at again shortly (so lifting the suspension resumes it), and once
    the suspension has lasted SUSPENSION_CANCEL_AFTER_DAYS the request is canceled with the
    suspension's error code. Returns whether the request is held."""
    suspended_at = request.account.suspended_at or request.project.suspended_at
    if suspended_at is None:
        return False
    now = timezone.now()
    waiting = Request.objects.filter(pk=request.pk, status__in=[Status.QUEUED, Status.RETRYING])
    if suspended_at > now - timedelta(days=SUSPENSION_CANCEL_AFTER_DAYS):
        waiting.update(next_attempt_at=now + SUSPENSION_RECHECK)
        return True
    subject = "account" if request.account.suspended_at else "project"
    cancel_waiting(
        request,
        error=error_object(
            f"{subject}_suspended",
            f"The {subject} was suspended for {SUSPENSION_CANCEL_AFTER_DAYS} days while this "
            "request waited, so it was canceled without being sent. Contact support@reqrun.com.",
        ),
    )
    return True


def defer_for_capacity(request_pk: int) -> None:
    """No free slot for this account: leave it queued and try again shortly, via the sweeper."""
    delay = timedelta(seconds=CAPACITY_RETRY_SECONDS * (0.5 + random.random()))
    Request.objects.filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()),
        pk=request_pk,
        status__in=[Status.QUEUED, Status.RETRYING],
    ).update(next_attempt_at=timezone.now() + delay)
