"""Failover figures for `make bench`: what moving to a secondary upstream adds.

    python -m bench.failover [--samples 100]

Starts the same throw-away stack as `bench.run` with two fake upstreams, a healthy one
(the secondary of every project below) and one answering 503 to everything, then sends
one call at a time (c=1), rotating through:

- direct: straight to the healthy upstream;
- plain: through ReqRun to a project whose only upstream is the healthy one;
- refused: through ReqRun to a project whose primary refuses connections (a loopback port
  nothing listens on) and whose secondary is the healthy upstream;
- 503: likewise, with the 503 upstream as the primary.

First with every breaker closed (the threshold is set out of reach, so each call tries the
primary first), then with the failing primaries' breakers open. "added" is the p50 over
the direct call. Targets: a refused primary with its breaker closed adds under 50 ms; with
the breaker open, failover adds no more than a plain call of the same phase does (within
1 ms of noise).
Prints a table and writes JSON under bench/results/ (name ending in `-failover.json`).
"""

from __future__ import annotations

import argparse
import json
import os
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
from devstack.servers import free_port, wait_for_port

RESULTS = Path(__file__).resolve().parent / "results"
CLOSED_TARGET_MS = 50.0
NOISE_MS = 1.0
BODY = {"model": "gpt-bench", "messages": [{"role": "user", "content": "fail over"}]}


def bootstrap(stack: stacks.Stack, email: str, *upstream_urls: str) -> str:
    args = ["bootstrap_project", "--email", email, "--plan", "enterprise"]
    for url in upstream_urls:
        args += ["--upstream-url", url, "--upstream-key", stacks.PROVIDER_KEY]
    return json.loads(stacks.manage(stack, *args).strip().splitlines()[-1])["api_key"]


def open_breakers(stack: stacks.Stack, *base_urls: str) -> None:
    """Open the breakers of the upstreams at `base_urls` for an hour, as five failures would."""
    stacks.manage(
        stack,
        "shell",
        "-c",
        "from datetime import timedelta\n"
        "from django.utils import timezone\n"
        "from projects.models import Upstream\n"
        "now = timezone.now()\n"
        f"Upstream.objects.filter(base_url__in={list(base_urls)!r}).update("
        "breaker_opened_at=now, breaker_open_until=now + timedelta(hours=1))",
    )


def sample(client: httpx.Client, url: str, key: str) -> float:
    started = time.perf_counter()
    response = client.post(url, json=BODY, headers={"Authorization": f"Bearer {key}"})
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise stacks.StackError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return elapsed


def measure(targets: dict[str, tuple[str, str]], samples: int) -> dict[str, list[float]]:
    """`samples` calls per target, one at a time, the order rotating every round."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    with httpx.Client(timeout=60) as client:
        for name in names:  # warm connections and caches
            for _ in range(3):
                sample(client, *targets[name])
        for n in range(samples):
            shift = n % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(sample(client, *targets[name]))
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    direct = statistics.median(times["direct"])
    return {
        name: {
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "added_p50_ms": round(statistics.median(values) - direct, 2),
        }
        for name, values in times.items()
    }


def report(figures: dict) -> None:
    print(f"{'failover, c=1':34} {'p50 ms':>8} {'p99 ms':>8} {'added':>8}  target")
    for phase in ("closed", "open"):
        # Compared with the plain calls of the same phase: the machine drifts between phases.
        plain = figures[phase]["plain"]["added_p50_ms"]
        for name, row in figures[phase].items():
            if phase == "open" and name == "direct":
                continue
            target = ""
            if name == "refused" and phase == "closed":
                ok = row["added_p50_ms"] < CLOSED_TARGET_MS
                target = f"< {CLOSED_TARGET_MS:.0f} ms {'PASS' if ok else 'MISS'}"
            elif phase == "open" and name != "plain":
                ok = row["added_p50_ms"] <= plain + NOISE_MS
                target = f"≤ plain ({plain:+.1f} ms) {'PASS' if ok else 'MISS'}"
            label = {"direct": "direct", "plain": f"plain ({phase} phase)"}.get(
                name, f"{name} primary, breaker {phase}"
            )
            print(
                f"{label:34} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
                f"{row['added_p50_ms']:>+8.1f}  {target}"
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args(argv)
    # The stack's processes inherit this: no breaker opens by itself during the closed run.
    os.environ["REQRUN_BREAKER_FAILURES"] = "1000000000"
    directory = Path(tempfile.mkdtemp(prefix="reqrun-bench-failover-"))
    try:
        with ExitStack() as exit_stack:
            stack = stacks.start(
                exit_stack,
                directory,
                delays=[0],
                web_workers=1,
                worker_concurrency=50,
                db_pool_max_size=60,
            )
            healthy = stack.upstreams[0]
            port = free_port()
            failing = stacks.spawn(
                exit_stack,
                stack,
                "upstream-503",
                [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)]
                + ["--default-step", "503"],
            )
            wait_for_port(port, timeout=20, what="fake upstream (503)", log=failing.log)
            unavailable = f"http://127.0.0.1:{port}/v1"
            refused = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
            through = f"{stack.web_url}/v1/chat/completions"
            targets = {
                "direct": (f"{healthy}/chat/completions", stacks.PROVIDER_KEY),
                "plain": (through, bootstrap(stack, "plain@example.com", healthy)),
                "refused": (through, bootstrap(stack, "refused@example.com", refused, healthy)),
                "503": (through, bootstrap(stack, "unavailable@example.com", unavailable, healthy)),
            }
            figures = {"closed": summary(measure(targets, args.samples))}
            open_breakers(stack, refused, unavailable)
            figures["open"] = summary(measure(targets, args.samples))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(figures)
    path = write(figures, "-failover")
    print(f"results: bench/results/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
