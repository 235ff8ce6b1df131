"""The engine's SQL: every statement that moves a request between states, written out.

Each is one statement, so each change is atomic without a transaction of its own, and
each keeps the account's pending count (its PendingStripe rows) in step: +1 when a
request is accepted, −1 in the same statement that ends it. Values are bound; JSON goes in as
`Jsonb`. Table names are the models' own (a rename fails the tests, not production).
"""

from datetime import datetime

from django.db import connection
from psycopg.types.json import Jsonb

from core import stripes
from requests_app.models import PendingStripe

ACTIVE = "('queued', 'running', 'retrying')"
WAITING = "('queued', 'retrying')"


def _jsonb(value):
    return None if value is None else Jsonb(value)


def _run(sql: str, params) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() if cursor.description else None


PENDING_TABLE = PendingStripe._meta.db_table
TAKE_PENDING_SLOT = (
    stripes.take_one(
        table=PENDING_TABLE,
        column="pending",
        match="account_id = %(account_id)s",
        limit="%(limit)s",
        start=None,
    )
    + " RETURNING id"
)
CREATE_PENDING_STRIPES = stripes.create_rows(
    table=PENDING_TABLE, key_columns="account_id", key_values="%s", column="pending"
)


def take_pending_slot(*, account_id: int, limit: int) -> bool:
    """Count one more unfinished request for the account, unless it is at `limit`; makes
    the account's stripes the first time. Waits for a stripe another transaction holds.

    Runs inside the accept's transaction: if the insert of the request fails, so does this.
    """
    params = {"account_id": account_id, "limit": limit}
    if _run(TAKE_PENDING_SLOT, params):
        return True
    _run(CREATE_PENDING_STRIPES, [account_id])
    return _run(TAKE_PENDING_SLOT, params) is not None


PENDING = f"SELECT COALESCE(sum(pending), 0) FROM {PENDING_TABLE} WHERE account_id = %s"  # noqa: S608


def pending(account_id: int) -> int:
    return _run(PENDING, [account_id])[0]


# A request gives its slot back to its own stripe, whichever it was taken from: the stripes'
# sum is what counts (core/stripes.py), and ending requests spread over the stripes too.
GIVE_BACK_SLOT = f"""
    UPDATE {PENDING_TABLE} SET pending = pending - 1
    WHERE account_id IN (SELECT account_id FROM {{ended}})
        AND stripe = %(request_id)s %% {stripes.STRIPES}"""  # noqa: S608 - constants only


CLAIM = """
WITH claimed AS (
    UPDATE requests_app_request
    SET status = 'running', attempt_count = attempt_count + 1, lease_until = %(lease_until)s,
        started_at = COALESCE(started_at, %(now)s), next_attempt_at = NULL
    WHERE id = %(request_id)s AND attempt_count = %(attempt_count)s
        AND status IN ('queued', 'retrying') AND NOT cancel_requested
        AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
    RETURNING id, attempt_count
)
INSERT INTO requests_app_attempt (request_id, number, upstream, started_at, outcome)
SELECT id, attempt_count, %(upstream)s, %(now)s, '' FROM claimed
RETURNING id
"""


def claim(
    *, request_id: int, attempt_count: int, upstream: str, now: datetime, lease_until: datetime
):
    """Move a due request to `running` for attempt `attempt_count + 1` and open that
    attempt's row, naming the upstream it is sent to (recorded before it is sent); the new
    attempt's id, or None if the request was not ours to take."""
    row = _run(
        CLAIM,
        {
            "request_id": request_id,
            "attempt_count": attempt_count,
            "upstream": upstream,
            "now": now,
            "lease_until": lease_until,
        },
    )
    return row[0] if row else None


CONCLUDE = f"""
WITH closed AS (
    UPDATE requests_app_attempt
    SET finished_at = %(now)s, latency_ms = %(latency_ms)s, outcome = %(outcome)s,
        status_code = %(status_code)s, error_code = %(error_code)s,
        retry_after_ms = %(retry_after_ms)s
    WHERE request_id = %(request_id)s AND number = %(number)s AND finished_at IS NULL
    RETURNING id
), concluded AS (
    UPDATE requests_app_request
    SET status = %(status)s, lease_until = NULL, next_attempt_at = %(next_attempt_at)s,
        finished_at = %(finished_at)s, error = %(error)s, partial = %(partial)s,
        next_upstream = %(next_upstream)s, upstream_tries = %(upstream_tries)s,
        request_body = CASE WHEN %(ends)s THEN NULL ELSE request_body END,
        response_status_code = %(response_status_code)s, response_headers = %(response_headers)s,
        response_body = %(response_body)s, response_expires_at = %(response_expires_at)s,
        usage = %(usage)s
    WHERE id = %(request_id)s AND attempt_count = %(number)s AND status = 'running'
        AND (%(lease_expired_before)s::timestamptz IS NULL
             OR lease_until < %(lease_expired_before)s::timestamptz)
        AND EXISTS (SELECT 1 FROM closed)
    RETURNING account_id
), released AS ({GIVE_BACK_SLOT.format(ended="concluded")} AND %(ends)s
)
SELECT count(*) FROM concluded
"""  # noqa: S608 - constants only


def conclude(
    *,
    request_id: int,
    number: int,
    now: datetime,
    attempt: dict,
    status: str,
    ends: bool,
    next_attempt_at: datetime | None = None,
    next_upstream: str = "",
    upstream_tries: int = 0,
    error: dict | None = None,
    partial: bool = False,
    response: dict | None = None,
    lease_expired_before: datetime | None = None,
) -> bool:
    """Close attempt `number`'s row with its result and move the request on, in one statement.

    Applies only while that attempt owns the request and its row is still open, so of a late
    worker and the sweeper exactly one decides what the attempt was. The request's
    `next_upstream` / `upstream_tries` say where its next attempt is due (failover.py).
    `response` (the stored
    answer's columns) replaces the previous attempt's, and an attempt without one clears it:
    the request's answer is always its last attempt's, as its `error` is (an earlier
    upstream's 503 is not the answer to a request whose last attempt found no upstream). The
    sweeper passes `lease_expired_before`, so a lease renewed meanwhile is left alone.
    """
    response = response or {}
    params = {
        "request_id": request_id,
        "number": number,
        "now": now,
        "latency_ms": attempt.get("latency_ms"),
        "outcome": attempt["outcome"],
        "status_code": attempt.get("status_code"),
        "error_code": attempt.get("error_code"),
        "retry_after_ms": attempt.get("retry_after_ms"),
        "status": status,
        "ends": ends,
        "next_attempt_at": next_attempt_at,
        "next_upstream": next_upstream,
        "upstream_tries": upstream_tries,
        "finished_at": now if ends else None,
        "error": _jsonb(error),
        "partial": partial,
        "response_status_code": response.get("response_status_code"),
        "response_headers": _jsonb(response.get("response_headers")),
        "response_body": response.get("response_body"),
        "response_expires_at": response.get("response_expires_at"),
        "usage": _jsonb(response.get("usage")),
        "lease_expired_before": lease_expired_before,
    }
    return _run(CONCLUDE, params)[0] == 1


END_WAITING = f"""
WITH ended AS (
    UPDATE requests_app_request
    SET status = %(status)s, finished_at = %(now)s, request_body = NULL,
        next_attempt_at = NULL,
        error = CASE WHEN %(keep_answer)s AND response_status_code IS NOT NULL THEN NULL
                     ELSE %(error)s::jsonb END
    WHERE id = %(request_id)s AND status IN {WAITING}
        AND (NOT %(only_if_requested)s OR cancel_requested)
        AND (NOT %(only_if_due)s OR next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
        AND (NOT %(only_if_due)s OR NOT cancel_requested)
    RETURNING account_id
), released AS ({GIVE_BACK_SLOT.format(ended="ended")}
)
SELECT count(*) FROM ended
"""  # noqa: S608 - constants only


def end_waiting(
    *,
    request_id: int,
    status: str,
    now: datetime,
    error: dict | None = None,
    only_if_requested: bool = False,
    only_if_due: bool = False,
    keep_answer: bool = False,
) -> bool:
    """End a request that is waiting to run (queued or retrying) as `status` (canceled or
    expired); with `only_if_requested`, only if a cancel was asked for; with `only_if_due`,
    only if it is due and nobody asked to cancel it. With `keep_answer`, a request whose last
    attempt got an upstream answer ends with that answer and no `error`, as one whose
    attempts ran out does (`conclude`): never an answer and an error side by side."""
    params = {
        "request_id": request_id,
        "status": status,
        "now": now,
        "error": _jsonb(error),
        "keep_answer": keep_answer,
        "only_if_requested": only_if_requested,
        "only_if_due": only_if_due,
    }
    return _run(END_WAITING, params)[0] == 1


CANCEL = f"""
WITH marked AS (
    UPDATE requests_app_request
    SET cancel_requested = TRUE,
        status = CASE WHEN status IN {WAITING} THEN 'canceled' ELSE status END,
        finished_at = CASE WHEN status IN {WAITING} THEN %(now)s ELSE finished_at END,
        request_body = CASE WHEN status IN {WAITING} THEN NULL ELSE request_body END,
        next_attempt_at = CASE WHEN status IN {WAITING} THEN NULL ELSE next_attempt_at END
    WHERE id = %(request_id)s AND status IN {ACTIVE}
    RETURNING account_id, status
), canceled AS (
    SELECT account_id FROM marked WHERE status = 'canceled'
), released AS ({GIVE_BACK_SLOT.format(ended="canceled")}
)
SELECT status FROM marked
"""  # noqa: S608 - constants only


def cancel(*, request_id: int, now: datetime) -> str | None:
    """Cancel a waiting request at once, or mark a running one so no further attempt
    starts; the request's status after that, or None if it had already ended."""
    row = _run(CANCEL, {"request_id": request_id, "now": now})
    return row[0] if row else None
