"""Serving a streamed request: hold the client until the worker's first bytes, then relay.

See docs/durability-and-streaming.md for the design.
"""

import asyncio
import json

from django.http import StreamingHttpResponse

from requests_app.api.responses import accepted_response, final_response, in_thread, load_request
from requests_app.engine import accept as services
from requests_app.engine.streams import error_event, mark_client_gone, read_entries
from requests_app.models import Request, Status


def stream_broken_event(record: Request) -> bytes:
    error = record.error or {}
    return error_event(
        error.get("message") or "The stream ended before the answer was complete.",
        error.get("code") or "stream_interrupted",
    )


async def client_went_away(record: Request) -> None:
    """Tokens are money: tell the worker to abandon the upstream call, cancel what is queued."""
    try:
        await asyncio.shield(mark_client_gone(record.public_id))
        await asyncio.shield(in_thread(services.cancel_request)(request=record))
    except Exception:  # noqa: S110 - best effort while the connection is already gone
        pass


async def relay_chunks(record: Request, entries):
    """Yield the upstream's bytes until a clean end; on a break, an error event and no [DONE]."""
    try:
        async for entry in entries:
            kind = entry["kind"]
            if kind == b"chunk":
                yield entry["data"]
            elif kind == b"end":
                return
            elif kind in (b"error", b"final", b"idle"):
                current = await in_thread(load_request)(record.pk)
                if kind == b"idle" and not current.is_terminal:
                    continue
                if current.status != Status.SUCCEEDED:
                    yield stream_broken_event(current)
                return
    except asyncio.CancelledError:
        await client_went_away(record)
        raise


async def relay_stream(record: Request, wait_seconds: int):
    """Hold until the worker starts streaming, then relay; before that it is a normal wait."""
    entries = read_entries(record.public_id)
    deadline = asyncio.get_running_loop().time() + wait_seconds
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
            if asyncio.get_running_loop().time() > deadline:
                return await in_thread(accepted_response)(current)
    except asyncio.CancelledError:
        await client_went_away(record)
        raise
    if start is None:
        return await in_thread(final_response)(await in_thread(load_request)(record.pk))
    response = StreamingHttpResponse(
        relay_chunks(record, entries), status=int(start["status"]), content_type="text/event-stream"
    )
    for name, value in json.loads(start["headers"]).items():
        response[name] = value
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["ReqRun-Request-Id"] = record.public_id
    response["ReqRun-Attempts"] = str(
        await in_thread(lambda: Request.objects.get(pk=record.pk).attempt_count)()
    )
    return response
