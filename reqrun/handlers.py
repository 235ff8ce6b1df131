"""The ASGI handler for `/v1`: Django's own, built from the API's short middleware list."""

import asyncio

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

API_PREFIX = "/v1/"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/")


def close_response(response) -> None:
    """What `HttpResponse.close()` does, without sending `request_finished` (see below)."""
    for closer in response._resource_closers:
        closer()
    response._resource_closers.clear()
    response.closed = True


class ApiHandler(ASGIHandler):
    """Builds its chain from `settings.API_MIDDLEWARE` with Django's own loader, and serves
    a call without the per-request signals.

    The loader reads `settings.MIDDLEWARE`, so the API list stands in for it while the
    chain is built, once, when the process starts.

    Django's handler gives every request a ThreadSensitiveContext: a thread of its own for
    the request's thread-sensitive steps (signal receivers, rendering), alive until the
    response is sent, so a caller waiting five minutes would hold an idle thread for five
    minutes. API views do their ORM work through `in_thread` and close their connections
    there; the remaining short thread-sensitive steps share the process-wide thread.

    `request_started` and `request_finished` are not sent: their receivers are Django's
    connection and query-log housekeeping (`close_old_connections`, `reset_queries`) and
    the caches' `close`, none of which has anything to do for /v1 — the event loop holds no
    database connection (`in_thread` hands each one back where it was used), `DEBUG` is
    off, and the Redis cache keeps its pool. Each signal cost a hop to the
    thread-sensitive thread, the largest single item of the web's CPU at c=50.
    """

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"The API handler serves HTTP only, not {scope['type']}.")
        await self.handle(scope, receive, send)

    def load_middleware(self, is_async=False):
        browser_middleware = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = browser_middleware

    async def handle(self, scope, receive, send):
        """Django's `ASGIHandler.handle` less the signals: read the body, answer, and cancel
        the view if the caller disconnects first (a waiting view stops waiting; the request
        itself runs on)."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        script_prefix = get_script_prefix(scope)
        if script_prefix:  # served below a path: reverse() must know it (Django sets "/")
            set_script_prefix(script_prefix)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            close_response(error_response)
            return

        async def process_request():
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the caller went away while the answer was sent
            return response

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        answer = asyncio.create_task(process_request())
        await asyncio.wait((listener, answer), return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, answer):
            if not task.done():
                task.cancel()
            try:
                await task
            except (asyncio.CancelledError, RequestAborted):
                pass
        if not answer.cancelled():
            close_response(answer.result())
        body_file.close()
