"""ASGI entry point: the web process runs under uvicorn so waiting requests cost a coroutine.

Two Django handlers share the process. `/v1` goes through `ApiHandler`, whose middleware
list is `settings.API_MIDDLEWARE`: an API call carries no session, CSRF token, messages or
allauth state, and the browser stack contains sync-only middleware (allauth's user
sessions) that would put every call, waiting ones included, on a thread of its own.
Everything else goes through the usual handler and `settings.MIDDLEWARE`.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reqrun.settings")

browser_application = get_asgi_application()  # sets Django up before the imports below

from core import collector  # noqa: E402
from privacy.key_ring import lifespan  # noqa: E402
from reqrun.handlers import ApiHandler, is_api_path  # noqa: E402

api_application = ApiHandler()
collector.settle()  # last: what start-up made lives as long as the process


async def application(scope, receive, send):
    if scope["type"] == "lifespan":  # start-up refuses a key ring that cannot read what is stored
        return await lifespan(receive, send)
    if scope["type"] == "http" and is_api_path(scope["path"]):
        return await api_application(scope, receive, send)
    return await browser_application(scope, receive, send)
