"""Ending a request as `canceled`: the one module that moves a request into that state.

From outside (the API, the dashboard, an account deletion, the last streaming reader
leaving) through `cancel_request`; from the executor through `cancel_waiting`, when a
cancel arrived during an attempt or a suspension has outlasted its period.
"""

import logging

from django.db import connection
from django.utils import timezone

from requests_app.engine.notifications import announce_finished
from requests_app.models import ACTIVE_STATUSES, Request, Status

logger = logging.getLogger(__name__)

CANCEL_SQL = f"""
UPDATE {Request._meta.db_table}
SET cancel_requested = TRUE,
    status = CASE WHEN status IN (%s, %s) THEN %s ELSE status END,
    finished_at = CASE WHEN status IN (%s, %s) THEN %s ELSE finished_at END,
    request_body = CASE WHEN status IN (%s, %s) THEN NULL ELSE request_body END,
    next_attempt_at = CASE WHEN status IN (%s, %s) THEN NULL ELSE next_attempt_at END
WHERE id = %s AND status IN (%s, %s, %s)
RETURNING status
"""  # noqa: S608 - table name from _meta, values bound


def cancel_request(*, request: Request) -> bool:
    """Cancel a queued or retrying request now; a running one finishes its attempt only.

    One statement, so a request moving between running and retrying meanwhile is still
    caught. Returns False when the request had already finished.
    """
    waiting = [Status.QUEUED, Status.RETRYING]
    params = [*waiting, Status.CANCELED, *waiting, timezone.now(), *waiting, *waiting]
    params += [request.pk, *ACTIVE_STATUSES]
    with connection.cursor() as cursor:
        cursor.execute(CANCEL_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return False
    if row[0] == Status.CANCELED:
        logger.info("request canceled", extra={"request_id": request.public_id})
        announce_finished(request)
    return True


def cancel_waiting(request: Request, *, error: dict | None = None, only_if_requested=False) -> bool:
    """Cancel `request` if it is still waiting to run (queued or retrying); with
    `only_if_requested`, only when a cancel was asked for while an attempt ran."""
    waiting = Request.objects.filter(pk=request.pk, status__in=[Status.QUEUED, Status.RETRYING])
    if only_if_requested:
        waiting = waiting.filter(cancel_requested=True)
    canceled = waiting.update(
        status=Status.CANCELED,
        finished_at=timezone.now(),
        next_attempt_at=None,
        request_body=None,
        error=error,
    )
    if canceled:
        logger.info("request canceled", extra={"request_id": request.public_id})
        announce_finished(request)
    return bool(canceled)
