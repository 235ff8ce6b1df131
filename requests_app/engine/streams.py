"""The relay between the worker that streams from the upstream and the web process serving SSE.

One Redis stream per request carries entries of kind:
  start  — the upstream answered 2xx and its first bytes follow (no retries from here on)
  chunk  — raw bytes of the upstream's event stream, relayed as they arrive
  end    — the upstream finished cleanly
  error  — the stream broke after it started; the client gets an error event, never [DONE]
  final  — the request ended without streaming (e.g. an error answer): serve the record
Entries persist until the key expires, so a reader that starts late still sees everything.
"""

import asyncio
import json
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings

from requests_app.engine.redis_client import client

STREAM_TTL_SECONDS = 600
READ_BLOCK_MS = 5000
CANCEL_TTL_SECONDS = 600


def stream_key(public_id: str) -> str:
    return f"reqrun:stream:{public_id}"


def cancel_key(public_id: str) -> str:
    return f"reqrun:stream-cancel:{public_id}"


def error_event(message: str, code: str) -> bytes:
    payload = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


class StreamPublisher:
    """Worker side: append entries for one request's stream."""

    def __init__(self, public_id: str):
        self.key = stream_key(public_id)
        self.cancel = cancel_key(public_id)
        self.client = client()

    def send(self, kind: str, **fields) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(self.key, {"kind": kind, **fields})
            pipe.expire(self.key, STREAM_TTL_SECONDS)
            pipe.execute()

    def start(self, status_code: int, headers: dict[str, str]) -> None:
        self.send("start", status=str(status_code), headers=json.dumps(headers))

    def chunk(self, data: bytes) -> None:
        self.client.xadd(self.key, {"kind": "chunk", "data": data})

    def client_gone(self) -> bool:
        return bool(self.client.exists(self.cancel))


def announce_final(public_id: str) -> None:
    """Tell a waiting stream reader that the request ended without (or after) its stream."""
    try:
        StreamPublisher(public_id).send("final")
    except redis.RedisError:
        pass  # the reader notices through its database check


_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def async_client() -> aioredis.Redis:
    """One client per event loop; each open stream holds one pooled connection while it reads."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(
            settings.REDIS_URL, max_connections=2000, socket_connect_timeout=2
        )
    return client


async def read_entries(public_id: str):
    """Web side: yield each entry as a dict of str → bytes; {"kind": b"idle"} on silence."""
    key = stream_key(public_id)
    last_id = "0-0"
    client = async_client()
    while True:
        try:
            answer = await client.xread({key: last_id}, block=READ_BLOCK_MS, count=500)
        except (redis.RedisError, OSError):
            await asyncio.sleep(1)
            yield {"kind": b"idle"}
            continue
        if not answer:
            yield {"kind": b"idle"}
            continue
        for entry_id, fields in answer[0][1]:
            last_id = entry_id
            yield {name.decode(): value for name, value in fields.items()}


async def mark_client_gone(public_id: str) -> None:
    await async_client().set(cancel_key(public_id), 1, ex=CANCEL_TTL_SECONDS)
