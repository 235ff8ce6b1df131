"""Streaming figures for `make bench`: time to first byte added by ReqRun, and 200 streams at once.

    python -m bench.streams [--samples 40] [--streams 200]

Starts the same throw-away stack as `bench.run`, then
1. sends streamed chat completions one at a time, alternating direct-to-upstream and
   through ReqRun, and measures the time until the first content chunk arrives;
2. opens 200 streamed completions through ReqRun at once against an upstream that paces
   its chunks (100 ms apart), and counts the ones that end with `data: [DONE]`.
Prints a table and writes JSON under bench/results/ (name ending in `-streams.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench import stack as stacks
from bench.report import percentile, write


async def first_byte_ms(client: httpx.AsyncClient, url: str, key: str, n: int) -> float:
    body = {
        "model": "gpt-bench",
        "stream": True,
        "user": f"ttfb-{n}",
        "messages": [{"role": "user", "content": "first byte"}],
    }
    started = time.perf_counter()
    elapsed = 0.0
    async with client.stream(
        "POST", url, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        async for chunk in response.aiter_raw():  # read to the end, timing the first bytes
            if not elapsed and chunk.strip():
                elapsed = (time.perf_counter() - started) * 1000
    return elapsed


async def one_stream(client: httpx.AsyncClient, url: str, key: str, n: int) -> bool:
    body = {
        "model": "script:slowchunks100",
        "stream": True,
        "user": f"many-{n}",
        "messages": [{"role": "user", "content": f"stream {n}"}],
    }
    try:
        async with client.stream(
            "POST", url, json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            data = b"".join([chunk async for chunk in response.aiter_raw()])
        return response.status_code == 200 and b"data: [DONE]" in data
    except httpx.HTTPError:
        return False


async def measure(stack: stacks.Stack, key: str, samples: int, streams: int) -> dict:
    direct_url = f"{stack.upstreams[0]}/chat/completions"
    through_url = f"{stack.web_url}/v1/chat/completions"
    direct, through = [], []
    async with httpx.AsyncClient(timeout=60) as client:
        for n in range(3):  # warm connections on both sides
            await first_byte_ms(client, direct_url, "sk-bench", -n - 1)
            await first_byte_ms(client, through_url, key, -n - 1)
        for n in range(samples):
            pair = [(direct, direct_url, "sk-bench"), (through, through_url, key)]
            for values, url, auth in pair if n % 2 else reversed(pair):
                values.append(await first_byte_ms(client, url, auth, n))
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_stream(client, through_url, key, n) for n in range(streams))
        )
        wall = time.perf_counter() - started
    return {
        "ttfb_direct_ms": {"p50": statistics.median(direct), "p99": percentile(direct, 0.99)},
        "ttfb_through_ms": {"p50": statistics.median(through), "p99": percentile(through, 0.99)},
        "ttfb_added_p50_ms": statistics.median(through) - statistics.median(direct),
        "concurrent_streams": {
            "opened": streams,
            "completed": sum(results),
            "wall_s": round(wall, 2),
        },
    }


def report(figures: dict) -> None:
    added = figures["ttfb_added_p50_ms"]
    streams = figures["concurrent_streams"]
    rows = [
        (
            "time to first byte, p50 ms",
            f"{figures['ttfb_direct_ms']['p50']:.1f}",
            f"{figures['ttfb_through_ms']['p50']:.1f}",
            f"+{added:.1f}",
            "",
        ),
        (
            "time to first byte, p99 ms",
            f"{figures['ttfb_direct_ms']['p99']:.1f}",
            f"{figures['ttfb_through_ms']['p99']:.1f}",
            "",
            "",
        ),
        (
            f"{streams['opened']} concurrent streams",
            "",
            f"{streams['completed']} completed",
            f"{streams['wall_s']} s",
            "all " + ("PASS" if streams["completed"] == streams["opened"] else "MISS"),
        ),
    ]
    print(f"{'streaming':30} {'direct':>10} {'through ReqRun':>18} {'added':>10}  target")
    for name, direct, through, added_text, target in rows:
        print(f"{name:30} {direct:>10} {through:>18} {added_text:>10}  {target}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="reqrun-bench-streams-"))
    try:
        with ExitStack() as exit_stack:
            stack = stacks.start(
                exit_stack,
                directory,
                delays=[0],
                web_workers=1,
                worker_concurrency=args.streams + 20,
                db_pool_max_size=args.streams + 30,
            )
            key = stacks.bootstrap(
                stack, email="streams@example.com", upstream_url=stack.upstreams[0]
            )
            figures = asyncio.run(measure(stack, key, args.samples, args.streams))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(figures)
    path = write(figures, "-streams")
    print(f"results: bench/results/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
