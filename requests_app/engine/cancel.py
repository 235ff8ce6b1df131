"""Ending a request as `canceled`: the one module that moves a request into that state.

From outside (the API, the dashboard, an account deletion, the last streaming reader
leaving) through `cancel_request`; from the executor through `cancel_waiting`, when a
cancel arrived during an attempt or a suspension has outlasted its period.
"""

import logging

from django.utils import timezone

from requests_app.engine import sql
from requests_app.engine.notifications import announce_finished
from requests_app.models import Request, Status

logger = logging.getLogger(__name__)


def cancel_request(*, request: Request) -> bool:
    """Cancel a queued or retrying request now; a running one finishes its attempt only.

    One statement, so a request moving between running and retrying meanwhile is still
    caught. Returns False when the request had already finished.
    """
    status = sql.cancel(request_id=request.pk, now=timezone.now())
    if status is None:
        return False
    if status == Status.CANCELED:
        logger.info("request canceled", extra={"request_id": request.public_id})
        announce_finished(request)
    return True


def cancel_waiting(request: Request, *, error: dict | None = None, only_if_requested=False) -> bool:
    """Cancel `request` if it is still waiting to run (queued or retrying); with
    `only_if_requested`, only when a cancel was asked for while an attempt ran."""
    canceled = sql.end_waiting(
        request_id=request.pk,
        status=Status.CANCELED,
        now=timezone.now(),
        error=error,
        only_if_requested=only_if_requested,
    )
    if canceled:
        logger.info("request canceled", extra={"request_id": request.public_id})
        announce_finished(request)
    return bool(canceled)
