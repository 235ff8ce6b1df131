"""The load generator: its own process, so its CPU never counts as ReqRun's.

Reads one JSON batch per line on stdin and answers one JSON line on stdout:

    {"url": …, "headers": {…}, "body": "…", "concurrency": 50,
     "duration": 5.0, "warmup": 0.5}        # closed loop for warmup + duration seconds
    {…, "total": 500, "concurrency": 500}    # exactly `total` requests, then stop
    {…, "requests": 10000, "concurrency": 50} # closed loop until 10,000 were sent (soak)

Every virtual caller keeps its own keep-alive connection per origin, as separate
applications would. The client is as light as an HTTP/1.1 client can be in Python: the
request's bytes written straight to an asyncio transport, the answer parsed by httptools
(the C parser uvicorn uses). It shares the two cores with the stack it measures, and
`httpx` spent 0.34 ms of CPU per request (0.5–0.8 ms beside a loaded stack, an eighth of
the machine at c=50); this one spends ~0.02 ms, so the figures are ReqRun's, not the
client's. Its CPU is still measured and printed (`load`).

A closed loop keeps `concurrency` requests in flight; each coroutine sends its next
request as soon as the previous one answers. Latency counts the requests started after
the warm-up; throughput, the successful answers that arrived inside the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

MAX_SURPRISES = 5  # unexpected answers kept per batch, with what they said


class AnswerError(Exception):
    """The connection failed, or ended before a whole answer came."""


@dataclass(frozen=True)
class Target:
    """A batch's one request, its bytes built once."""

    origin: tuple[str, int]
    request: bytes

    @classmethod
    def of(cls, batch: dict) -> Target:
        url = urlsplit(batch["url"])
        body = batch["body"].encode()
        lines = [
            f"POST {url.path or '/'}{'?' + url.query if url.query else ''} HTTP/1.1",
            f"Host: {url.netloc}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in batch["headers"].items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return cls((url.hostname or "127.0.0.1", url.port or 80), head + body)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, the answer parsed by
    httptools (which also undoes chunked transfer coding)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.received = False  # any byte of the current answer
        self.keep_alive = True

    async def exchange(self, request: bytes, timeout: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        self.body, self.received = [], False
        self.answer = loop.create_future()
        self.transport.write(request)
        timer = loop.call_later(timeout, self._time_out, timeout)
        try:
            return await self.answer
        finally:
            timer.cancel()
            self.answer = None

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    def _time_out(self, timeout: float) -> None:
        self._fail(TimeoutError(f"no whole answer within {timeout:g} s"))
        self.transport.close()  # a late answer must not pass for the next request's

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(AnswerError(f"the connection closed before the answer ended ({exc})"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(AnswerError(f"not an HTTP answer: {error}"))
            self.transport.close()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))


@dataclass
class Caller:
    """One virtual caller: a keep-alive connection per origin it calls."""

    connections: dict[tuple[str, int], Connection] = field(default_factory=dict)

    async def post(self, target: Target, timeout: float) -> tuple[int, bytes]:
        connection = self.connections.get(target.origin)
        reused = connection is not None and not connection.transport.is_closing()
        if not reused:
            connection = await self._connect(target.origin)
        try:
            answer = await connection.exchange(target.request, timeout)
        except AnswerError:
            if not reused or connection.received:
                raise
            # The server closed the idle connection as the request went out, before reading
            # it: once more on a new one, as any HTTP client does.
            connection = await self._connect(target.origin)
            answer = await connection.exchange(target.request, timeout)
        if not connection.keep_alive:
            connection.transport.close()
        return answer

    async def _connect(self, origin: tuple[str, int]) -> Connection:
        _, connection = await asyncio.get_running_loop().create_connection(Connection, *origin)
        self.connections[origin] = connection
        return connection

    def close(self) -> None:
        for connection in self.connections.values():
            connection.transport.close()


async def _send(
    caller: Caller, target: Target, batch: dict, surprises: list[dict]
) -> tuple[int | str, float, float]:
    started = time.perf_counter()
    try:
        outcome, body = await caller.post(target, batch["timeout"])
        detail = body[:300].decode(errors="replace")
    except (AnswerError, TimeoutError, OSError) as error:
        outcome, detail = type(error).__name__, str(error)[:300]
    if outcome != batch["expect"] and len(surprises) < MAX_SURPRISES:
        surprises.append({"outcome": outcome, "detail": detail})
    return outcome, started, time.perf_counter()


async def run_batch(callers: list[Caller], batch: dict) -> dict:
    target = Target.of(batch)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    surprises: list[dict] = []
    finished_in_window = 0
    answered = 0  # warm-up included: what the server side did work for
    begin = time.perf_counter()
    total = batch.get("total")
    count = batch.get("requests") or 0
    sent = 0
    window_start = begin + batch.get("warmup", 0.0)
    window_end = window_start + batch.get("duration", 0.0)

    async def closed_loop(caller: Caller) -> None:
        nonlocal finished_in_window, answered
        while time.perf_counter() < window_end:
            outcome, started, ended = await _send(caller, target, batch, surprises)
            answered += 1
            if started >= window_start:
                outcomes[str(outcome)] += 1
                latencies.append((ended - started) * 1000)
            if window_start <= ended <= window_end and outcome == batch["expect"]:
                finished_in_window += 1

    async def counted_loop(caller: Caller) -> None:
        nonlocal sent, answered, finished_in_window
        while sent < count:
            sent += 1
            outcome, started, ended = await _send(caller, target, batch, surprises)
            answered += 1
            outcomes[str(outcome)] += 1
            latencies.append((ended - started) * 1000)
            if outcome == batch["expect"]:
                finished_in_window += 1

    async def one_shot(caller: Caller) -> None:
        outcome, started, ended = await _send(caller, target, batch, surprises)
        outcomes[str(outcome)] += 1
        latencies.append((ended - started) * 1000)

    if total:
        await asyncio.gather(*(one_shot(callers[i]) for i in range(total)))
        window = time.perf_counter() - begin
        finished_in_window = answered = total
    elif count:
        await asyncio.gather(*(counted_loop(callers[i]) for i in range(batch["concurrency"])))
        window = time.perf_counter() - begin
    else:
        await asyncio.gather(*(closed_loop(callers[i]) for i in range(batch["concurrency"])))
        window = window_end - window_start
    return {
        "outcomes": dict(outcomes),
        "surprises": surprises,
        "ok": outcomes[str(batch["expect"])],
        "all_answered": answered,
        "latencies_ms": latencies,
        "window_s": window,
        "wall_s": time.perf_counter() - begin,
        "rps": finished_in_window / window if window > 0 else 0.0,
    }


async def serve(lines: asyncio.StreamReader) -> None:
    # The callers live across batches: the web and each upstream stay warm between them.
    callers: list[Caller] = []
    try:
        while line := await lines.readline():
            batch = json.loads(line)
            batch.setdefault("timeout", 120.0)
            while len(callers) < max(batch["concurrency"], batch.get("total") or 0):
                callers.append(Caller())
            result = await run_batch(callers, batch)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        for caller in callers:
            caller.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await serve(reader)


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # the lighter the client, the more of the two cores ReqRun gets
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
