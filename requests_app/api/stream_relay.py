"""Serving a streamed request: hold the client until the worker's first bytes, then relay.

A reader relays exactly one attempt: the one whose `start` it saw. Anything from another
attempt, a request that ended without a clean end, or silence longer than an attempt may
legitimately stay silent ends the stream with an OpenAI-style error event, never `[DONE]`.
Several callers may read one request (the same Idempotency-Key); the upstream call is
abandoned only when the last of them has left. See docs/durability-and-streaming.md.
"""

import asyncio
import json

from django.conf import settings
from django.http import StreamingHttpResponse

from core.outages import DATABASE_UNAVAILABLE
from requests_app import metrics
from requests_app.api.responses import (
    answer_accepted,
    deliver_final_response,
    in_thread,
    load_request,
    release_if_owed,
)
from requests_app.engine import cancel, retention, sse
from requests_app.engine.executor import UNREADABLE_STREAM
from requests_app.engine.notifications import hub
from requests_app.engine.streams import (
    CHUNK_UNREADABLE,
    error_event,
    read_entries,
    reader_cannot_decrypt,
    reader_joined,
    reader_left,
)
from requests_app.models import Request, Status

STREAM_STALLED = "stream_stalled"


def stream_broken_event(record: Request) -> bytes:
    error = record.error or {}
    return error_event(
        error.get("message") or "The stream ended before the answer was complete.",
        error.get("code") or "stream_interrupted",
    )


def silence_limit(record: Request) -> float:
    """The longest a healthy attempt can stay silent: its timeout, plus the lease's grace."""
    return record.project.attempt_timeout_seconds + settings.REQRUN_LEASE_GRACE_SECONDS


class Reader:
    """One caller reading one request's stream; leaves exactly once."""

    def __init__(self, record: Request):
        self.record = record
        self.present = False

    async def join(self) -> None:
        await reader_joined(self.record.public_id)
        self.present = True

    async def leave(self, *, abandoned: bool) -> None:
        """Tokens are money: the last caller to hang up stops the upstream call and cancels
        what is still queued; a caller who leaves while others read changes nothing."""
        if not self.present:
            return
        self.present = False
        try:
            last = await asyncio.shield(reader_left(self.record.public_id, abandoned=abandoned))
            if last:
                await asyncio.shield(in_thread(cancel.cancel_request)(request=self.record))
        except Exception:  # noqa: S110 - best effort while the connection is already gone
            pass


def rest_of_answer(record: Request, attempt: int, sent: int, last: bytes) -> bytes:
    """What is still owed to a caller whose stream ended while it heard nothing: nothing if
    the last bytes it got end the answer; else the end went missing from Redis (a caller
    that reads too slowly finds its stream gone a minute after the end), so the rest of the
    stored answer, or an error event where none is kept (zero retention)."""
    if sse.completed(record.endpoint, last):
        return b""
    body = retention.stored_response_body(record) if record.attempt_count == attempt else None
    if body is not None and len(body) >= sent:
        return body[sent:]
    return error_event(
        f"Request {record.public_id} finished, but this connection read its stream too slowly "
        "for ReqRun to keep the rest; the answer is incomplete.",
        "stream_interrupted",
    )


def restarting_event(record: Request) -> bytes:
    return error_event(
        f"This ReqRun server is restarting; request {record.public_id} goes on. Read its "
        f"result at /v1/requests/{record.public_id}.",
        "server_restarting",
        "server_error",
    )


async def relay_chunks(reader: Reader, entries, attempt: bytes):
    """Yield one attempt's bytes until its clean end; otherwise an error event, no [DONE]."""
    record = reader.record
    loop = asyncio.get_running_loop()
    last_heard = loop.time()
    sent, last = 0, b""  # how much of the attempt this caller has had, and its last chunk
    completion_hub = await hub()
    metrics.stream_opened()
    try:
        async for entry in entries:
            if completion_hub.stopping:
                yield restarting_event(record)  # SIGTERM: end it now, naming the request
                return
            kind = entry["kind"]
            if (
                kind in (b"start", b"chunk", b"unreadable", b"end")
                and entry.get("attempt") != attempt
            ):
                yield error_event(
                    f"The stream of request {record.public_id} was interrupted; the answer "
                    "is incomplete.",
                    "stream_interrupted",
                )
                return
            if kind == b"chunk":
                last_heard = loop.time()
                last = entry["data"]
                sent += len(last)
                yield last
            elif kind == b"unreadable":
                # This process's key ring does not open the stream: the rest of the answer
                # cannot reach this caller, so its upstream call stops and the request fails.
                await reader_cannot_decrypt(record.public_id)
                yield error_event(UNREADABLE_STREAM, CHUNK_UNREADABLE, "server_error")
                return
            elif kind == b"end":
                return
            elif kind in (b"final", b"idle"):
                if sse.completed(record.endpoint, last):
                    # The caller has the answer's end ([DONE]): nothing may follow it, and
                    # nothing it lacks, whatever the record says of the attempt since.
                    return
                try:
                    current = await in_thread(load_request)(record.pk)
                except DATABASE_UNAVAILABLE:
                    current = None  # an outage: for all the relay knows, it still runs
                if current is None and kind == b"final":
                    yield error_event(
                        f"Request {record.public_id} ended, but ReqRun could not read how; "
                        f"see /v1/requests/{record.public_id}.",
                        "stream_interrupted",
                    )
                    return
                if kind == b"idle" and (current is None or not current.is_terminal):
                    if loop.time() - last_heard < silence_limit(record):
                        continue
                    yield error_event(
                        f"Request {record.public_id} sent nothing for too long; the answer is "
                        "incomplete.",
                        STREAM_STALLED,
                    )
                    return
                if current.status != Status.SUCCEEDED:
                    yield stream_broken_event(current)
                elif kind == b"idle":  # it ended while this caller heard nothing
                    if rest := await in_thread(rest_of_answer)(current, int(attempt), sent, last):
                        yield rest
                return
    except asyncio.CancelledError:
        await reader.leave(abandoned=True)
        raise
    finally:
        metrics.stream_closed()
        await reader.leave(abandoned=False)


async def relay_stream(record: Request, wait_seconds: int, *, owed: bool = False):
    """Hold until the worker starts streaming, then relay; before that it is a normal wait.
    `owed`: zero retention counts this caller among those owed the answer kept in the
    record (`retention.owe_answer`), which only an answer that never streamed is."""
    reader = Reader(record)
    completion_hub = await hub()
    await reader.join()
    deadline = asyncio.get_running_loop().time() + wait_seconds
    entries = read_entries(record.public_id, start_by=deadline)
    start = None
    try:
        async for entry in entries:
            if entry["kind"] == b"start":
                start = entry
                break
            if entry["kind"] == b"final":
                break
            current = await in_thread(load_request)(record.pk)
            if current.is_terminal:
                break
            if asyncio.get_running_loop().time() > deadline or completion_hub.stopping:
                await reader.leave(abandoned=False)
                await release_if_owed(current, owed)
                return await answer_accepted(current)
    except asyncio.CancelledError:
        # Gone before the first byte. One who sent an Idempotency-Key retries with it (an
        # SDK whose timeout came first) and attaches; only a keyless request is given up.
        await reader.leave(abandoned=record.idempotency_key is None)
        await release_if_owed(record, owed)
        raise
    if start is None:
        await reader.leave(abandoned=False)
        final = await in_thread(load_request)(record.pk)
        return await in_thread(deliver_final_response)(final, owed=owed)
    await release_if_owed(record, owed)  # its answer comes through Redis, not the record
    response = StreamingHttpResponse(
        relay_chunks(reader, entries, start["attempt"]),
        status=int(start["status"]),
        content_type="text/event-stream",
    )
    for name, value in json.loads(start["headers"]).items():
        response[name] = value
    response["X-Accel-Buffering"] = "no"
    response["ReqRun-Request-Id"] = record.public_id
    response["ReqRun-Attempts"] = start["attempt"].decode()
    return response
