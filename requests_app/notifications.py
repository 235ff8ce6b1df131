"""Completion notices over Redis pub/sub, so waiting callers wake the moment a request ends.

Workers publish a request's id on one channel when it becomes terminal. Each web process
holds ONE subscriber connection (per event loop) and hands each notice to the coroutines
waiting on that id. Waiters register before they read the database, so a notice published
in between is never missed; when Redis is away they fall back to reading the database.
"""

import asyncio
import logging
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings

from requests_app.redis_client import client

logger = logging.getLogger(__name__)

CHANNEL = "reqrun:request-finished"
SUBSCRIBE_WAIT_SECONDS = 2.0


def publish_finished(public_id: str) -> None:
    try:
        client().publish(CHANNEL, public_id)
    except redis.RedisError:
        # Waiters notice through their database fallback; nothing is lost.
        logger.warning("completion notice not published", extra={"request_id": public_id})


class CompletionHub:
    """The per-event-loop subscriber and the futures waiting on it."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Future]] = {}
        self.subscribed = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._listen())
        if not self.subscribed.is_set():
            try:
                await asyncio.wait_for(self.subscribed.wait(), SUBSCRIBE_WAIT_SECONDS)
            except TimeoutError:
                pass  # waiters poll the database until the subscriber is back

    @property
    def healthy(self) -> bool:
        return self.subscribed.is_set()

    def register(self, public_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(public_id, set()).add(future)
        return future

    def unregister(self, public_id: str, future: asyncio.Future) -> None:
        futures = self.waiters.get(public_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self.waiters[public_id]

    def _wake(self, public_id: str) -> None:
        for future in self.waiters.pop(public_id, ()):
            if not future.done():
                future.set_result(True)

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            client = aioredis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=15
            )
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.subscribed.set()
                    delay = 0.5
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._wake(message["data"].decode())
            except (redis.RedisError, OSError):
                logger.warning("completion subscriber lost its Redis connection; reconnecting")
            finally:
                self.subscribed.clear()
                await client.aclose()
                # Anyone waiting re-reads the database now rather than missing a notice.
                for public_id in list(self.waiters):
                    self._wake(public_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionHub]" = (
    weakref.WeakKeyDictionary()
)


async def hub() -> CompletionHub:
    loop = asyncio.get_running_loop()
    completion_hub = _hubs.get(loop)
    if completion_hub is None:
        completion_hub = _hubs[loop] = CompletionHub()
    await completion_hub.start()
    return completion_hub
