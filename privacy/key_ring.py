"""Whether this process's REQRUN_ENCRYPTION_KEYS read the secrets other processes stored.

Every web and worker process must hold the same keys. A worker holding others would look
healthy and fail every request it took (the body it must send cannot be decrypted); a web
holding others would answer 500 wherever it shows what is stored. So both check the
newest stored secrets at start-up and refuse to start if they cannot read them. A fresh
database stores nothing yet and passes; a database that cannot be reached is not a reason
to stay down, so the check is skipped with a warning.
"""

import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from core import encryption, schema
from core.outages import DATABASE_UNAVAILABLE

logger = logging.getLogger(__name__)


def refuse_unreadable_secrets() -> None:
    """Raise ImproperlyConfigured, naming what cannot be read, if the key ring is wrong."""
    from projects.models import Upstream  # the apps are loaded by the time a process starts
    from requests_app.models import Request

    stored = [
        (Upstream, "provider_key_encrypted", "provider key"),
        (Request, "request_body", "request body"),
        (Request, "response_body", "response body"),
    ]
    try:
        unreadable = [
            what for model, field, what in stored if encryption.newest_unreadable(model, field)
        ]
    except DATABASE_UNAVAILABLE:
        logger.warning("encryption keys not checked: the database did not answer")
        return
    finally:
        connection.close()  # back to the pool: start-up's thread serves nothing else
    if unreadable:
        raise ImproperlyConfigured(
            f"REQRUN_ENCRYPTION_KEYS cannot decrypt the newest stored {' or '.join(unreadable)}: "
            "this process holds other keys than the processes that stored them. Give every "
            "web and worker process the same REQRUN_ENCRYPTION_KEYS, primary first, and keep "
            "an old key in the list until `manage.py rotate_encryption_keys` has run. "
            "Not starting, as this process would fail what it handles."
        )


def stop_a_worker_that_cannot_read(**_) -> None:
    """celery's worker_init receiver: a SystemExit gets past celery's catch of receivers'
    errors and ends the worker before it consumes anything."""
    try:
        refuse_unreadable_secrets()
    except ImproperlyConfigured as error:
        logger.critical("worker not started: %s", error)
        raise SystemExit(str(error)) from None


async def lifespan(receive, send) -> None:
    """The ASGI lifespan protocol for the web: startup fails, and the server exits, when the
    key ring cannot read what is stored."""
    from asgiref.sync import sync_to_async

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                # On a schema not migrated yet the web starts and answers 503 (/readyz names
                # `schema`); the stored secrets cannot be read before the tables exist.
                if await sync_to_async(schema.say_if_not_migrated, thread_sensitive=False)():
                    await sync_to_async(refuse_unreadable_secrets, thread_sensitive=False)()
            except ImproperlyConfigured as error:
                logger.critical("web not started: %s", error)
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
