"""The relay between the worker that streams from the upstream and the web process serving SSE.

One Redis stream per request carries entries of kind:
  start  — attempt N's upstream answered 2xx and its first bytes follow (no retries from here)
  chunk  — raw bytes of attempt N's event stream, encrypted with the key ring
  end    — attempt N finished cleanly
  final  — the request ended (any way): its record says how
Every entry names its attempt, so a reader that has started relaying attempt N refuses
anything from another attempt: one client never receives two attempts spliced together.
The stream is capped (MAXLEN), its expiry is refreshed on every write and shortened once
the request has ended, and its bytes are ciphertext, so Redis never holds a readable answer.

Readers register while they read: a streaming request is abandoned (its upstream call
stopped, the request canceled) only when the last of its readers has left. A reader that
cannot decrypt a chunk (no key in its ring opens it) stops the upstream call as well: no
caller of that process can be given the answer, so the request fails, partial.
"""

import asyncio
import json
import weakref
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from django.conf import settings

from core import encryption
from requests_app.engine.redis_client import client

STREAM_TTL_SECONDS = 600
FINISHED_TTL_SECONDS = 60  # long enough for a reader that is still draining the last entries
STREAM_MAX_ENTRIES = 100_000
READ_BLOCK_MS = 5000
READERS_TTL_SECONDS = 3600


def stream_key(public_id: str) -> str:
    return f"reqrun:stream:{public_id}"


def readers_key(public_id: str) -> str:
    return f"reqrun:stream-readers:{public_id}"


def abandoned_key(public_id: str) -> str:
    """Holds why the readers stopped the upstream call: READERS_LEFT or CHUNK_UNREADABLE."""
    return f"reqrun:stream-abandoned:{public_id}"


# Why the readers stopped the call, as the attempt's error code.
READERS_LEFT = "client_disconnected"
CHUNK_UNREADABLE = "encryption_key_missing"


def error_event(message: str, code: str, error_type: str = "upstream_error") -> bytes:
    payload = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


class StreamPublisher:
    """Worker side: append one attempt's entries to its request's stream."""

    def __init__(self, public_id: str, attempt: int):
        self.key = stream_key(public_id)
        self.abandoned = abandoned_key(public_id)
        self.readers = readers_key(public_id)
        self.attempt = str(attempt)
        self.client = client()

    def send(self, kind: str, **fields) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(
                self.key,
                {"kind": kind, "attempt": self.attempt, **fields},
                maxlen=STREAM_MAX_ENTRIES,
                approximate=True,
            )
            pipe.expire(self.key, STREAM_TTL_SECONDS)
            pipe.execute()

    def start(self, status_code: int, headers: dict[str, str]) -> None:
        self.send("start", status=str(status_code), headers=json.dumps(headers))

    def chunk(self, data: bytes) -> None:
        self.send("chunk", data=encryption.encrypt(data))

    def stopped_by_readers(self) -> str | None:
        """Why the readers asked for the upstream call to stop (READERS_LEFT or
        CHUNK_UNREADABLE), or None while they read on."""
        reason = self.client.get(self.abandoned)
        if reason is None:
            return None
        # Any other value: a web process from before the reason was written (it wrote 1).
        return CHUNK_UNREADABLE if reason == CHUNK_UNREADABLE.encode() else READERS_LEFT

    def unread(self) -> bool:
        """No reader is registered: those who waited left before the first bytes (their
        202). Any doubt (Redis away) counts as read."""
        try:
            return int(self.client.get(self.readers) or 0) <= 0
        except redis.RedisError:
            return False


@dataclass(frozen=True)
class Relayed:
    """What one attempt relayed to its readers: the headers sent with the first bytes, and
    the bytes (None when no key in this process's ring opens some of them)."""

    headers: dict[str, str]
    body: bytes | None


def relayed_by(public_id: str, attempt: int) -> Relayed | None:
    """One attempt's share of its request's stream as Redis keeps it (for a worker lost
    mid-stream, what its readers got); None when Redis holds no start of it. A chunk no key
    in the ring opens is logged by the request's id, and leaves the body unknown."""
    wanted = str(attempt).encode()
    headers, body = None, bytearray()
    for _, fields in client().xrange(stream_key(public_id)):
        if fields.get(b"attempt") != wanted:
            continue
        if fields[b"kind"] == b"start":
            headers = json.loads(fields[b"headers"])
        elif fields[b"kind"] == b"chunk" and body is not None:
            data = encryption.decrypt_stored(fields[b"data"], request_id=public_id, stored="stream")
            body = None if data is None else body + data
    if headers is None:
        return None
    return Relayed(headers, None if body is None else bytes(body))


def announce_final(public_id: str) -> None:
    """Tell stream readers the request has ended; the stream itself is kept only briefly."""
    try:
        with client().pipeline(transaction=False) as pipe:
            pipe.xadd(stream_key(public_id), {"kind": "final", "attempt": "0"})
            pipe.expire(stream_key(public_id), FINISHED_TTL_SECONDS)
            pipe.execute()
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


async def read_entries(public_id: str, *, start_by: float | None = None):
    """Web side: yield each entry as a dict of str → bytes (chunks decrypted; one no key in
    the ring opens comes as kind `unreadable`, logged by the request's id);
    {"kind": b"idle"} on silence. Until a `start` entry, silence is reported by `start_by`
    (the event loop's clock) at the latest, so a caller's wait budget is kept."""
    key = stream_key(public_id)
    last_id = "0-0"
    client = async_client()
    loop = asyncio.get_running_loop()
    while True:
        block = READ_BLOCK_MS
        if start_by is not None:
            # At least 1 ms: XREAD's BLOCK 0 would wait for ever.
            block = max(1, min(block, int((start_by - loop.time()) * 1000)))
        try:
            answer = await client.xread({key: last_id}, block=block, count=500)
        except (redis.RedisError, OSError):
            await asyncio.sleep(1)
            yield {"kind": b"idle"}
            continue
        if not answer:
            yield {"kind": b"idle"}
            continue
        for entry_id, fields in answer[0][1]:
            last_id = entry_id
            entry = {name.decode(): value for name, value in fields.items()}
            if entry["kind"] == b"start":
                start_by = None
            if entry["kind"] == b"chunk":
                entry["data"] = encryption.decrypt_stored(
                    entry["data"], request_id=public_id, stored="stream"
                )
                if entry["data"] is None:
                    entry["kind"] = b"unreadable"
            yield entry


async def reader_joined(public_id: str) -> None:
    async with async_client().pipeline(transaction=False) as pipe:
        pipe.incr(readers_key(public_id))
        pipe.expire(readers_key(public_id), READERS_TTL_SECONDS)
        await pipe.execute()


async def reader_left(public_id: str, *, abandoned: bool) -> bool:
    """Unregister a reader; True when it was the last one and it left before the end, in
    which case the worker is told to stop the upstream call."""
    remaining = await async_client().decr(readers_key(public_id))
    if remaining > 0 or not abandoned:
        return False
    # nx: a reader that could not decrypt the stream has already said why it stops.
    await async_client().set(abandoned_key(public_id), READERS_LEFT, ex=STREAM_TTL_SECONDS, nx=True)
    return True


async def reader_cannot_decrypt(public_id: str) -> None:
    """Stop the upstream call: this reader's key ring does not open the stream, so the
    answer cannot reach its callers, and the request fails (partial) rather than succeed
    unseen. Best effort: with Redis away the attempt runs on, and only this caller is told."""
    try:
        await async_client().set(abandoned_key(public_id), CHUNK_UNREADABLE, ex=STREAM_TTL_SECONDS)
    except (redis.RedisError, OSError):
        pass
