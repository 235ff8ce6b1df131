"""Completion notices over Redis pub/sub, so waiting callers wake the moment a request ends.

Workers publish a request's id on one channel when it becomes terminal, with the final
answer when it is small (its body stays encrypted as stored). Each web process
holds ONE subscriber connection (per event loop) and hands each notice to the coroutines
waiting on that id. Waiters register before they read the database, so a notice published
in between is never missed; when Redis is away they fall back to reading the database.
"""

import asyncio
import json
import logging
import signal
import threading
import weakref
from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import transaction

from requests_app.engine.redis_client import client
from requests_app.engine.streams import announce_final
from requests_app.models import Request

logger = logging.getLogger(__name__)

CHANNEL = "reqrun:request-finished"
# Commands a caller adds to the notice's round trip (the worker's slot release).
Along = Callable[[redis.client.Pipeline], None]
SUBSCRIBE_WAIT_SECONDS = 2.0


# A final answer rides along with its notice when it is at most this big (ciphertext), so
# a waiting caller is answered without reading the database; larger ones are read there.
ANSWER_IN_NOTICE_MAX_BYTES = 64 * 1024
ANSWER_FIELDS = ("status", "attempt_count", "response_status_code", "response_headers", "error")


def answer_of(request: Request) -> dict | None:
    """What a waiting caller's response is built from, as the notice carries it, or None."""
    body = request.response_body
    if body is not None and len(body) > ANSWER_IN_NOTICE_MAX_BYTES:
        return None
    answer = {field: getattr(request, field) for field in ANSWER_FIELDS}
    answer["response_body"] = None if body is None else bytes(body).decode("ascii")
    return answer


def apply_answer(request: Request, answer: dict) -> None:
    """Bring `request` to its final state from a notice instead of reading it back."""
    for field in ANSWER_FIELDS:
        setattr(request, field, answer[field])
    body = answer["response_body"]
    request.response_body = None if body is None else body.encode("ascii")


def publish_finished(
    public_id: str, answer: dict | None = None, *, along: Along | None = None
) -> None:
    """Tell waiters `public_id` ended; `answer` (see `answer_of`) spares them a read.
    `along` queues the caller's own commands to go in the same round trip."""
    message = public_id if answer is None else f"{public_id}\n{json.dumps(answer)}"
    try:
        if along is None:
            client().publish(CHANNEL, message)
        else:
            with client().pipeline(transaction=False) as pipe:
                along(pipe)
                pipe.publish(CHANNEL, message)
                pipe.execute()
    except redis.RedisError:
        # Waiters notice through their database fallback; nothing is lost.
        logger.warning("completion notice not published", extra={"request_id": public_id})


def announce_finished(
    request: Request, *, answer: dict | None = None, along: Along | None = None
) -> None:
    """Tell waiters (and stream readers) that `request` ended, once that is committed, so
    what they read is the final state. `along`: see `publish_finished`."""
    logger.info("request finished", extra={"request_id": request.public_id})

    def publish() -> None:
        publish_finished(request.public_id, answer, along=along)
        if request.stream:
            announce_final(request.public_id)

    transaction.on_commit(publish, robust=True)


class CompletionHub:
    """The per-event-loop subscriber and the futures waiting on it.

    The subscriber checks its own connection: after HEALTH_CHECK_SECONDS without a message
    it sends a PING, and a PONG that does not come back within PONG_TIMEOUT_SECONDS means
    the connection is half-open (a Redis restarted behind a NAT or a dead peer), so it
    reconnects and wakes every waiter to re-read the database meanwhile.
    """

    HEALTH_CHECK_SECONDS = 5.0
    PONG_TIMEOUT_SECONDS = 3.0

    def __init__(self, url: str | None = None) -> None:
        self.url = url or settings.REDIS_URL
        self.stopping = False  # the web process received SIGTERM
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

    def _wake(self, public_id: str, answer: dict | None = None) -> None:
        for future in self.waiters.pop(public_id, ()):
            if not future.done():
                future.set_result(answer)

    def begin_shutdown(self) -> None:
        """SIGTERM: every waiter is woken with RESTARTING and answers its caller now."""
        self.stopping = True
        for public_id in list(self.waiters):
            self._wake(public_id, RESTARTING)

    def _deliver(self, message: bytes) -> None:
        public_id, _, answer = message.decode().partition("\n")
        if public_id in self.waiters:  # most notices are for other processes' callers
            self._wake(public_id, json.loads(answer) if answer else None)

    async def _subscribe(self, pubsub) -> None:
        """Subscribe and wait for Redis to confirm it: a sent command proves nothing."""
        await pubsub.subscribe(CHANNEL)
        confirmation = await pubsub.get_message(timeout=SUBSCRIBE_WAIT_SECONDS)
        if confirmation is None or confirmation["type"] != "subscribe":
            raise redis.ConnectionError("the subscription was not confirmed")

    async def _receive(self, pubsub) -> None:
        """Hand notices to waiters until the connection fails or stops answering PINGs."""
        loop = asyncio.get_running_loop()
        pinged_at = None
        while True:
            wait = self.PONG_TIMEOUT_SECONDS if pinged_at else self.HEALTH_CHECK_SECONDS
            message = await pubsub.get_message(timeout=wait)
            if message is None:
                if pinged_at is not None:
                    raise redis.ConnectionError("no PONG: the connection is half-open")
                await pubsub.ping()
                pinged_at = loop.time()
                continue
            pinged_at = None  # anything heard proves the connection lives
            if message["type"] == "message":
                self._deliver(message["data"])

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2)
            try:
                async with client.pubsub() as pubsub:
                    await self._subscribe(pubsub)
                    self.subscribed.set()
                    delay = 0.5
                    await self._receive(pubsub)
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


# What a waiter is woken with when its web process is shutting down.
RESTARTING = object()


def _chain_sigterm(loop: asyncio.AbstractEventLoop, completion_hub: CompletionHub) -> None:
    """Let a SIGTERM reach the waiters before the server's own handler begins its shutdown.

    uvicorn stops accepting on SIGTERM and then waits for open responses; the waiters and
    streams of this process answer (202, or an error event naming the request) at once, so
    the process exits within seconds and no caller is cut off without its request id.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread (an embedded test server has none)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        loop.call_soon_threadsafe(completion_hub.begin_shutdown)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionHub]" = (
    weakref.WeakKeyDictionary()
)


async def hub() -> CompletionHub:
    loop = asyncio.get_running_loop()
    completion_hub = _hubs.get(loop)
    if completion_hub is None:
        completion_hub = _hubs[loop] = CompletionHub()
        _chain_sigterm(loop, completion_hub)
    await completion_hub.start()
    return completion_hub
