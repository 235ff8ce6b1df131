"""The load generator: its own process, so its CPU never counts as ReqRun's.

Reads one JSON batch per line on stdin and answers one JSON line on stdout:

    {"url": …, "headers": {…}, "body": "…", "concurrency": 50,
     "duration": 5.0, "warmup": 0.5}        # closed loop for warmup + duration seconds
    {…, "total": 500, "concurrency": 500}    # exactly `total` requests, then stop
    {…, "requests": 10000, "concurrency": 50} # closed loop until 10,000 were sent (soak)

Every virtual caller has its own `httpx.AsyncClient` (one keep-alive connection per
origin), as separate applications would: one client with a 500-connection pool spends
O(n²) CPU in httpcore's pool bookkeeping (seconds per batch at 500), which would starve
the very stack it is measuring on a 2-core machine.

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

import httpx

MAX_SURPRISES = 5  # unexpected answers kept per batch, with what they said


async def _send(
    client: httpx.AsyncClient, batch: dict, surprises: list[dict]
) -> tuple[int | str, float, float]:
    started = time.perf_counter()
    try:
        response = await client.post(
            batch["url"], content=batch["body"], headers=batch["headers"], timeout=batch["timeout"]
        )
        outcome: int | str = response.status_code
        detail = response.text[:300]
    except httpx.HTTPError as error:
        outcome, detail = type(error).__name__, str(error)[:300]
    if outcome != batch["expect"] and len(surprises) < MAX_SURPRISES:
        surprises.append({"outcome": outcome, "detail": detail})
    return outcome, started, time.perf_counter()


async def run_batch(clients: list[httpx.AsyncClient], batch: dict) -> dict:
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

    async def closed_loop(client: httpx.AsyncClient) -> None:
        nonlocal finished_in_window, answered
        while time.perf_counter() < window_end:
            outcome, started, ended = await _send(client, batch, surprises)
            answered += 1
            if started >= window_start:
                outcomes[str(outcome)] += 1
                latencies.append((ended - started) * 1000)
            if window_start <= ended <= window_end and outcome == batch["expect"]:
                finished_in_window += 1

    async def counted_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent, answered, finished_in_window
        while sent < count:
            sent += 1
            outcome, started, ended = await _send(client, batch, surprises)
            answered += 1
            outcomes[str(outcome)] += 1
            latencies.append((ended - started) * 1000)
            if outcome == batch["expect"]:
                finished_in_window += 1

    async def one_shot(client: httpx.AsyncClient) -> None:
        outcome, started, ended = await _send(client, batch, surprises)
        outcomes[str(outcome)] += 1
        latencies.append((ended - started) * 1000)

    if total:
        await asyncio.gather(*(one_shot(clients[i]) for i in range(total)))
        window = time.perf_counter() - begin
        finished_in_window = answered = total
    elif count:
        await asyncio.gather(*(counted_loop(clients[i]) for i in range(batch["concurrency"])))
        window = time.perf_counter() - begin
    else:
        await asyncio.gather(*(closed_loop(clients[i]) for i in range(batch["concurrency"])))
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
    # A few connections per caller: the web and each upstream stay warm between batches.
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with contextlib.AsyncExitStack() as clients_open:
        clients: list[httpx.AsyncClient] = []
        while line := await lines.readline():
            batch = json.loads(line)
            batch.setdefault("timeout", 120.0)
            while len(clients) < max(batch["concurrency"], batch.get("total") or 0):
                clients.append(
                    await clients_open.enter_async_context(httpx.AsyncClient(limits=limits))
                )
            result = await run_batch(clients, batch)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()


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
