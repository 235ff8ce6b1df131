"""The ASGI handler for `/v1`: Django's own, built from the API's short middleware list."""

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

API_PREFIX = "/v1/"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/")


class ApiHandler(ASGIHandler):
    """Builds its chain from `settings.API_MIDDLEWARE` with Django's own loader.

    The loader reads `settings.MIDDLEWARE`, so the API list stands in for it while the
    chain is built, once, when the process starts.

    Django's handler gives every request a ThreadSensitiveContext: a thread of its own for
    the request's thread-sensitive steps (signal receivers, rendering), alive until the
    response is sent, so a caller waiting five minutes would hold an idle thread for five
    minutes. API views do their ORM work through `in_thread` and close their connections
    there; the remaining short thread-sensitive steps share the process-wide thread.
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
