"""What a caller gets back: the upstream's final answer, a 202, or a wait until one is ready.

Database work runs through `in_thread`: one hop to a thread pool per step, so a waiting
caller costs a coroutine, not a thread.
"""

import asyncio
import contextvars
import json
import logging
from functools import partial, wraps

from django.db import close_old_connections
from django.http import HttpResponse
from rest_framework import status
from rest_framework.response import Response

from core.outages import is_outage
from core.prepared import PreparedGet
from requests_app import metrics
from requests_app.api.serializers import request_object
from requests_app.engine import retention, sse
from requests_app.engine.notifications import (
    ANSWER_IN_NOTICE_MAX_BYTES,
    RESTARTING,
    apply_answer,
    hub,
)
from requests_app.engine.streams import error_event
from requests_app.error_catalog import status_of
from requests_app.errors import NotFound, UpstreamError, outage_error
from requests_app.models import Request, Status

logger = logging.getLogger(__name__)

# While the Redis subscriber is healthy a waiter re-reads the database only this often,
# as a safety net; while it is down, more often.
SAFETY_RECHECK_SECONDS = 30.0
FALLBACK_RECHECK_SECONDS = 1.0


def _run(function, args, kwargs):
    try:
        return function(*args, **kwargs)
    finally:
        close_old_connections()  # hands the connection back to the pool


def in_thread(function):
    """Run sync ORM work in a pool thread, with Django's connection hygiene.

    What `sync_to_async(thread_sensitive=False)` does for code that never calls back into
    async code: the loop's default executor, the caller's context variables (log fields),
    and no per-call wrapper object (building asgiref's was ~3% of the web's CPU).
    """

    @wraps(function)
    async def call(*args, **kwargs):
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            None, partial(context.run, _run, function, args, kwargs)
        )

    return call


def _json(payload: dict, status_code: int, headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(
        payload if isinstance(payload, bytes) else json.dumps(payload),
        status=status_code,
        content_type="application/json",
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _error_status(error: dict) -> int:
    code = error.get("code")
    if error.get("type") == "upstream_error":
        return 504 if code in ("timeout", "deadline_exceeded") else UpstreamError.status_code
    return status_of(code, UpstreamError.status_code)


def _truncated_stream(request: Request) -> HttpResponse:
    """What was delivered of a stream that did not finish, ended by its recorded error.

    Nothing follows a stream's end: of one whose end was delivered yet which failed (its
    success could not be recorded, or the upstream reported an error inside it), the error
    event takes the end's place."""
    stored = retention.stored_response_body(request) or b""  # kept no longer, or unreadable
    delivered = sse.before_end(request.endpoint, stored)
    error = request.error or {
        "message": "The request was canceled while it streamed; the answer is incomplete.",
        "code": "request_canceled",
    }
    event = error_event(error.get("message") or "", error.get("code") or "stream_interrupted")
    response = HttpResponse(delivered + event, status=200, content_type="text/event-stream")
    for name, value in (request.response_headers or {}).items():
        response[name] = value
    return response


RESPONSE_NOT_RETAINED = (
    "The response is no longer kept (zero retention or older than 24 hours); the request's "
    "status and usage remain available."
)
RESPONSE_UNREADABLE = (
    "The stored response cannot be read with ReqRun's current encryption keys (the key it was "
    "encrypted with has been removed), so it cannot be replayed; the request's status and "
    "usage remain available."
)


def final_response(request: Request) -> HttpResponse:
    """How the request ended, as the caller (or a replay) gets it: the upstream's final
    answer as if the client had called it, a truncated stream ending in its error event, or
    ReqRun's own error. A replay never presents a failed or canceled request as a success."""
    error = request.error or {}
    stored = request.response_body is not None and request.response_status_code is not None
    if request.stream and request.partial:
        response = _truncated_stream(request)
    elif request.status == Status.CANCELED:
        response = _json(
            {
                "error": {
                    "message": "The request was canceled before it finished.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "request_canceled",
                }
            },
            status.HTTP_409_CONFLICT,
        )
    elif stored and (body := retention.stored_response_body(request)) is not None:
        response = _json(body, request.response_status_code, request.response_headers)
    elif request.status == Status.SUCCEEDED or (request.response_status_code and not error):
        response = _json(
            {
                "error": {
                    # Stored, yet not answered above: the keys no longer open it.
                    "message": RESPONSE_UNREADABLE if stored else RESPONSE_NOT_RETAINED,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "response_not_retained",
                }
            },
            status.HTTP_410_GONE,
        )
    else:
        response = _json({"error": error}, _error_status(error))
    if request.status != Status.SUCCEEDED:
        # ReqRun has done the retrying (or the caller canceled): an SDK that retried this
        # on its own would start a new request, with attempts and quota of its own.
        response["x-should-retry"] = "false"
    response["ReqRun-Request-Id"] = request.public_id
    response["ReqRun-Attempts"] = str(request.attempt_count)
    return response


def answer_has_body(http_request) -> bool:
    """Whether the answer to an HTTP request carries a body: a HEAD's has headers only, so
    a zero-retention result it would have shown has reached nobody and is kept."""
    return http_request.method != "HEAD"


def deliver_final_response(request: Request, *, owed: bool = False) -> HttpResponse:
    """The final answer for a waiting caller; with zero retention no copy is kept after it
    (after the last caller `owed` it, see `retention.forget_delivered_response`)."""
    response = final_response(request)
    retention.forget_delivered_response(request, owed=owed)
    return response


async def release_if_owed(request: Request, owed: bool) -> None:
    """Zero retention: a caller `owed` the answer that will not take it from the record
    (it leaves with its 202 or hangs up, or its stream reaches it through Redis) releases
    its debt, so the deliveries still owed decide when the answer is forgotten."""
    if owed:
        await in_thread(retention.release_answer)(request)


def accepted_response(request: Request) -> Response:
    """The 202 for `request` as the caller holds it. The body of a new request needs no
    query; one with attempts reads them, and if the database is away just then the caller
    gets a 503 that names its request instead."""
    try:
        body = request_object(request)
    except Exception as error:
        if not is_outage(error):
            raise
        raise outage_error(error, request_id=request.public_id) from error
    response = Response(body, status=status.HTTP_202_ACCEPTED)
    response["Location"] = f"/v1/requests/{request.public_id}"
    response["ReqRun-Request-Id"] = request.public_id
    response["ReqRun-Attempts"] = str(request.attempt_count)
    return response


async def answer_accepted(request: Request) -> Response:
    """`accepted_response`, built on the event loop for a request with no attempts yet (its
    body reads nothing); one with attempts reads them in a thread."""
    if request.attempt_count == 0:
        return accepted_response(request)
    return await in_thread(accepted_response)(request)


REQUEST_WITH_PROJECT: PreparedGet[Request] = PreparedGet(
    lambda pk: Request.objects.select_related("project").filter(pk=pk), pk=0
)


def load_request(pk: int) -> Request:
    try:
        return REQUEST_WITH_PROJECT.get(pk=pk)
    except Request.DoesNotExist:  # deleted meanwhile, with its account
        raise NotFound("This request no longer exists.", param="id") from None


async def deliver(request: Request, *, owed: bool = False) -> HttpResponse:
    """`deliver_final_response`, built on the event loop when that is cheap and safe.

    Only zero retention writes (it forgets the answer) and only a body larger than a notice
    may carry takes long to decrypt; those go to a thread, the rest is answered without a hop.
    """
    body = request.response_body
    if request.project.zero_retention or (
        body is not None and len(body) > ANSWER_IN_NOTICE_MAX_BYTES
    ):
        return await in_thread(deliver_final_response)(request, owed=owed)
    return final_response(request)


async def _read_or_keep(request_pk: int, public_id: str, record: Request | None) -> Request:
    """The request as the database has it now, or the caller's copy during an outage."""
    try:
        return await in_thread(load_request)(request_pk)
    except Exception as error:
        if record is None or not is_outage(error):
            raise
        logger.warning(
            "waiting caller could not read its request",
            extra={"request_id": public_id, "exception": type(error).__name__},
        )
        return record


async def wait_until_finished(
    request_pk: int,
    public_id: str,
    seconds: float,
    *,
    notice: asyncio.Future | None = None,
    record: Request | None = None,
) -> Request:
    """Wait for a terminal state: woken by Redis, re-reading the database only as a fallback.

    `notice` is a future its caller registered before the request was created; then the
    state before it fires is known (not finished) and the first read is skipped. With
    `record` (the caller's copy of this request), a notice that carries the final answer
    is applied to it and returned, with no read at all; and while the database cannot be
    reached, the wait goes on with that copy, which is what the caller gets at the end of
    its budget (its 202). Without one, the outage is the caller's answer.
    """
    completion_hub = await hub()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        future = notice or completion_hub.register(public_id)  # before reading: none missed
        metrics.waiter_started()
        try:
            if notice is None:
                request = await _read_or_keep(request_pk, public_id, record)
                if request.is_terminal or deadline - loop.time() <= 0:
                    return request
                if completion_hub.stopping:
                    return request  # SIGTERM: the caller gets its 202 now
            notice = None
            recheck = SAFETY_RECHECK_SECONDS if completion_hub.healthy else FALLBACK_RECHECK_SECONDS
            try:
                answer = await asyncio.wait_for(
                    future, max(0.0, min(deadline - loop.time(), recheck))
                )
            except TimeoutError:
                continue
            if answer is RESTARTING:
                continue  # read the state once more, then answer
            if answer is not None and record is not None:
                apply_answer(record, answer)
                return record
        finally:
            metrics.waiter_ended()
            completion_hub.unregister(public_id, future)
