"""Accepting requests: the transaction that records a call before anything runs it."""

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from django.db import IntegrityError, connection, transaction
from django.template.defaultfilters import pluralize
from django.utils import timezone
from django.utils.crypto import salted_hmac
from psycopg import errors as pg_errors

from core import encryption, stripes
from core.prepared import insert
from core.untrusted import storable
from projects.limits import (
    Limits,
    count_accepted_request,
    current_period_start,
    limits_for,
    next_period_start,
    quota_params,
    take_quota_sql,
)
from projects.models import ApiKey
from requests_app.engine import sql
from requests_app.engine.dispatch import publish_execute_request
from requests_app.errors import (
    INVALID_KEY_MESSAGE,
    IdempotencyMismatch,
    InvalidApiKey,
    PendingQueueFull,
    QuotaExceeded,
)
from requests_app.models import PendingStripe, Request

logger = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
PENDING_RETRY_AFTER_SECONDS = 5


def body_digest(body: bytes) -> str:
    """What an idempotency key's retry is compared by: keyed (HMAC-SHA256 under a key
    derived from SECRET_KEY), so someone who reads the database cannot confirm a guessed
    prompt by hashing it. Rotating SECRET_KEY makes retries of calls accepted before the
    rotation (remembered for up to 24 h) mismatch, as if their body had changed."""
    return salted_hmac("reqrun.request-body", body, algorithm="sha256").hexdigest()


@dataclass(frozen=True)
class Accepted:
    request: Request
    outcome: Literal["created", "replayed", "attached"]


def _enqueue_after_commit(request_pk: int) -> None:
    """The task is published once the request is durable. A broker that fails the publish
    never turns an accepted request into an error: it is logged, the caller gets its usual
    answer, and the sweeper dispatches the request (it looks for undispatched ones)."""
    transaction.on_commit(lambda: publish_execute_request(request_pk), robust=True)


def _remembered(*, api_key: ApiKey, idempotency_key: str) -> Request | None:
    """The request holding this key in the project, releasing it once it has finished and
    24 h have passed (never before it finishes: a 24 h deadline can outlast the window)."""
    existing = Request.objects.filter(
        project_id=api_key.project_id, idempotency_slot=idempotency_key
    ).first()
    expired = existing and existing.created_at < timezone.now() - IDEMPOTENCY_WINDOW
    if expired and existing.is_terminal:
        Request.objects.filter(pk=existing.pk).update(idempotency_slot=None)
        return None
    return existing


def remembered_call(
    *, api_key: ApiKey, endpoint: str, body: bytes, idempotency_key: str
) -> Accepted | None:
    """The request a keyed call repeats, if any: it is replayed or attached to without
    counting against any limit, so a client retry is never refused with a 429."""
    existing = _remembered(api_key=api_key, idempotency_key=idempotency_key)
    if existing is None:
        return None
    return _same_call(existing, body_digest(body), endpoint)


def _same_call(existing: Request, body_sha256: str, endpoint: str) -> Accepted:
    if existing.endpoint != endpoint or existing.body_sha256 != body_sha256:
        used = (
            f"for a call to {existing.endpoint}"
            if existing.endpoint != endpoint
            else "with a different request body"
        )
        raise IdempotencyMismatch(
            f"This Idempotency-Key was already used {used}. Use a new key for a different request.",
            param="Idempotency-Key",
        )
    return Accepted(existing, "replayed" if existing.is_terminal else "attached")


# The quota, the pending slot and the insert in one statement: one round trip and no
# BEGIN/COMMIT. Each counter is a set of stripes (core/stripes.py): the statement adds one
# to a stripe of this month's accepts and one to a stripe of the pending count that have
# room and that no other transaction holds, so it never waits for another accept's commit.
# The request's account_id is the slot's RETURNING, so when there is no stripe to take
# (the month's or the account's first request, a limit reached, every stripe with room
# held at that moment) it is NULL and the NOT NULL constraint aborts the whole statement:
# nothing is counted, and the transaction in accept_request decides, with the errors a
# caller should see.
TAKE_SLOT = stripes.take_one(
    table=PendingStripe._meta.db_table,
    column="pending",
    match="account_id = (SELECT account_id FROM quota)",
    limit="%s",
    start="%s",
)
IN_ONE_STATEMENT = f"""
WITH quota AS ({take_quota_sql(start="%s")} RETURNING account_id
), slot AS ({TAKE_SLOT} RETURNING account_id
)"""  # noqa: S608 - built from constants, values bound
SLOT_ACCOUNT = {"account_id": "(SELECT account_id FROM slot)"}


def _insert_in_one_statement(request: Request, limits: Limits) -> bool:
    """Insert `request` with its quota and pending slot taken; False if either was not
    there to take (nothing was written then)."""
    start = stripes.start()
    params = [
        *quota_params(request.account_id, limits.monthly_requests),
        start,
        limits.pending_requests,
        start,
    ]
    # Inside a caller's transaction, a savepoint keeps a refused statement from breaking it.
    try:
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            insert(request, prefix=IN_ONE_STATEMENT, prefix_params=params, computed=SLOT_ACCOUNT)
    except IntegrityError as error:
        if isinstance(error.__cause__, pg_errors.NotNullViolation):
            return False
        raise
    return True


def _accept_in_steps(request: Request, limits: Limits) -> None:
    """The accept as a transaction of its steps, each refusal with its own error; it waits
    for a stripe another transaction holds, and makes the stripes the first time."""
    with transaction.atomic():
        if not count_accepted_request(account=request.account, limit=limits.monthly_requests):
            monthly = limits.monthly_requests
            resets = next_period_start(current_period_start())
            raise QuotaExceeded(
                f"This account has used its {monthly:,} request{pluralize(monthly)} for this "
                "month. Upgrade the plan on the billing page, or wait: the quota resets on "
                f"{resets:%B} {resets.day}, {resets.year} at 00:00 UTC.",
                headers={"x-should-retry": "false"},
            )
        # Before the insert, as in the one statement: an insert can wait for a concurrent
        # one of the same idempotency key, and must never do so holding a slot that
        # statement waits for.
        if not sql.take_pending_slot(account_id=request.account_id, limit=limits.pending_requests):
            pending = limits.pending_requests
            raise PendingQueueFull(
                f"This account already has {pending:,} request{pluralize(pending)} waiting or "
                "running, its plan's limit. Retry when some have finished.",
                headers={"Retry-After": str(PENDING_RETRY_AFTER_SECONDS)},
            )
        insert(request)
        _enqueue_after_commit(request.pk)


def _recorded_model(payload: dict) -> str:
    """The model as the request's record shows it; the body itself goes unchanged.

    Only text is a model name: anything else is left for the upstream to refuse, and
    recorded as none given rather than as a Python repr."""
    model = payload.get("model")
    return storable(model)[:200] if isinstance(model, str) else ""


def accept_request(
    *,
    api_key: ApiKey,
    endpoint: str,
    body: bytes,
    payload: dict,
    idempotency_key: str | None,
    limits: Limits | None = None,
    public_id: str | None = None,
    waiting: bool = False,
) -> Accepted:
    """Record a call before it is dispatched, within quota and the pending-queue cap.

    One statement counts the request against the monthly quota, takes a pending slot
    (each a conditional UPDATE of one of the counter's stripes) and inserts the request;
    when it cannot, one transaction does the same step by step and says which limit
    refused. The task is enqueued only after commit, with the id alone.
    """
    project = api_key.project
    account = project.account
    body_sha256 = body_digest(body)
    stream = bool(payload.get("stream"))
    if idempotency_key:
        existing = _remembered(api_key=api_key, idempotency_key=idempotency_key)
        if existing:
            return _same_call(existing, body_sha256, endpoint)

    limits = limits or limits_for(account)
    now = timezone.now()
    try:
        # Built (and its body encrypted) before the transaction: the locks below are held
        # from the quota's UPDATE to the commit, and nothing slow may run in between.
        request = Request(
            **({"public_id": public_id} if public_id else {}),
            account=account,
            project=project,
            api_key=api_key,
            endpoint=endpoint,
            model=_recorded_model(payload),
            stream=stream,
            body_sha256=body_sha256,
            request_body=encryption.encrypt(body),
            idempotency_key=idempotency_key,
            idempotency_slot=idempotency_key,
            deadline_at=now + timedelta(seconds=project.deadline_seconds),
            max_attempts=min(project.max_attempts or limits.max_attempts, limits.max_attempts),
            dispatched_at=now,
            # A stream's caller too: an answer that never started streaming (a refusal)
            # reaches it from the record, like a plain answer.
            owed_deliveries=int(waiting and project.zero_retention),
        )
        if _insert_in_one_statement(request, limits):
            _enqueue_after_commit(request.pk)
        else:
            _accept_in_steps(request, limits)
    except (IntegrityError, QuotaExceeded, PendingQueueFull) as error:
        if isinstance(error.__cause__, pg_errors.ForeignKeyViolation):
            # The project (and with it this key) was deleted after the key authenticated.
            raise InvalidApiKey(INVALID_KEY_MESSAGE) from None
        # Another web process accepted the same key first: its insert took the key's slot,
        # or the last of the quota or the pending cap (it committed before our statement
        # could take the lock it held). This call repeats that one: attach to its request.
        existing = idempotency_key and _remembered(api_key=api_key, idempotency_key=idempotency_key)
        if not existing:
            raise
        return _same_call(existing, body_sha256, endpoint)
    logger.info(
        "request accepted",
        extra={
            "request_id": request.public_id,
            "project_id": project.public_id,
            "account_id": account.public_id,
            "endpoint": endpoint,
        },
    )
    return Accepted(request, "created")


def rotate_request_bodies(*, batch_size: int = 500) -> int:
    """Re-encrypt stored request and response bodies under the primary key; returns how many."""
    return encryption.rotate_stored(
        Request, ["request_body", "response_body"], batch_size=batch_size
    )
