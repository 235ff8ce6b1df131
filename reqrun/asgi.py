"""ASGI entry point: the web process runs under uvicorn so waiting requests cost a coroutine."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reqrun.settings")

application = get_asgi_application()
