"""Chaos run: load through ReqRun while workers die, Redis restarts and the upstream flaps.

    python -m tests.chaos [--duration 120] [--rate 20] [--kill-every 4] [--workers 2]

Starts its own throw-away PostgreSQL and Redis, the web process, workers and beat, all on
127.0.0.1, plus an in-process fake upstream whose answers flap (503 then 200, slow answers).
It sends requests in async mode, each with its own Idempotency-Key, SIGKILLs a random
worker every few seconds, and restarts Redis with its data thrown away halfway through.
Then it waits for every accepted request to end and prints: accepted, succeeded, failed,
lost (not terminal at the end), duplicate upstream executions, and the explanation for
each duplicate (an attempt in flight when its worker was killed). Exit code 0 means
nothing was lost and every duplicate is explained. Everything it starts stops at the end.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg

from devstack.__main__ import development_env
from devstack.servers import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["script:503,200", "script:drop,200", "sleep-300", "gpt-test", "script:429ram200,200"]


class Stack:
    """The ReqRun processes under test; each can be killed and started again."""

    def __init__(self, directory: Path, env: dict, workers: int):
        self.directory = directory
        self.env = env
        self.worker_count = workers
        self.web: subprocess.Popen | None = None
        self.beat: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.kills = 0

    def spawn(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self) -> subprocess.Popen:
        return self.spawn(
            "worker",
            sys.executable,
            "-m",
            "celery",
            "-A",
            "reqrun",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "16",
            "-Q",
            "requests,default",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        )

    def start(self) -> None:
        port = int(self.env["PORT"])
        self.web = self.spawn(
            "web",
            sys.executable,
            "-m",
            "uvicorn",
            "reqrun.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        )
        self.beat = self.spawn(
            "beat",
            sys.executable,
            "-m",
            "celery",
            "-A",
            "reqrun",
            "beat",
            "--loglevel",
            "WARNING",
            "--schedule",
            str(self.directory / "beat-schedule"),
        )
        self.workers = [self.start_worker() for _ in range(self.worker_count)]
        wait_for_port(port, timeout=30, what="web", log=self.directory / "web.log")

    def kill_random_worker(self) -> None:
        index = random.randrange(len(self.workers))
        os.killpg(self.workers[index].pid, signal.SIGKILL)
        self.workers[index].wait()
        self.kills += 1
        self.workers[index] = self.start_worker()

    def stop(self) -> None:
        for process in [self.web, self.beat, *self.workers]:
            if process and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [self.web, self.beat, *self.workers]:
            if process:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def bootstrap(env: dict, upstream_url: str) -> str:
    output = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "bootstrap_project",
            "--email",
            "chaos@example.com",
            "--upstream-url",
            upstream_url,
            "--upstream-key",
            "sk-chaos-provider-key",
            "--plan",
            "enterprise",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)["api_key"]


def send_load(
    base_url: str, api_key: str, *, duration: float, rate: float, chaos
) -> dict[str, str]:
    """Accepted request id per idempotency key; refused or failed sends are not accepted."""
    accepted: dict[str, str] = {}
    client = httpx.Client(timeout=10)

    def send(n: int) -> None:
        key = f"chaos-{n}"
        body = {
            "model": random.choice(MODELS),
            "user": key,
            "messages": [{"role": "user", "content": f"chaos {n}"}],
        }
        for _ in range(5):  # a client retry reuses the key, so it can never run twice
            try:
                response = client.post(
                    f"{base_url}/v1/chat/completions",
                    json=body,
                    headers={
                        "Authorization": f"Bearer {api_key}",
                        "Idempotency-Key": key,
                        "Prefer": "respond-async",
                    },
                )
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code == 202:
                accepted[key] = response.json()["id"]
                return
            time.sleep(0.5)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        n = 0
        while time.monotonic() - started < duration:
            pool.submit(send, n)
            n += 1
            chaos(time.monotonic() - started)
            time.sleep(1 / rate)
    client.close()
    return accepted


def run(
    *,
    duration: float = 120,
    rate: float = 20,
    kill_every: float = 4,
    workers: int = 2,
    settle_timeout: float = 180,
) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="reqrun-chaos-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, True)
        pg = EmbeddedPostgres(directory / "postgres", free_port())
        redis = EmbeddedRedis(directory / "redis", free_port())
        pg.start()
        stack.callback(pg.stop)
        redis.start()
        stack.callback(redis.stop)
        env = {
            **os.environ,
            **development_env(),
            "DEBUG": "false",
            "SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": pg.url,
            "REDIS_URL": redis.url,
            "PORT": str(free_port()),
            "REQRUN_LEASE_GRACE_SECONDS": "2",
            "REQRUN_SWEEP_INTERVAL_SECONDS": "1",
            "LOG_LEVEL": "WARNING",
        }
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        upstream = stack.enter_context(FakeUpstream())
        api_key = bootstrap(env, upstream.base_url)
        # Keep attempts short so a killed worker's lease runs out quickly.
        with psycopg.connect(pg.url, autocommit=True) as connection:
            connection.execute(
                "UPDATE projects_project SET attempt_timeout_seconds = 5, max_attempts = 10"
            )
        processes = Stack(directory, env, workers)
        stack.callback(processes.stop)
        processes.start()
        base_url = f"http://127.0.0.1:{env['PORT']}"

        state = {"last_kill": 0.0, "redis_restarted": False}

        def chaos(elapsed: float) -> None:
            if elapsed - state["last_kill"] >= kill_every:
                state["last_kill"] = elapsed
                processes.kill_random_worker()
            if not state["redis_restarted"] and elapsed >= duration / 2:
                state["redis_restarted"] = True
                pid = redis.running_pid()
                os.kill(pid, signal.SIGKILL)  # everything in Redis is lost
                (redis.directory / "dump.rdb").unlink(missing_ok=True)
                time.sleep(1)
                redis.start()

        accepted = send_load(base_url, api_key, duration=duration, rate=rate, chaos=chaos)
        report = settle(base_url, api_key, accepted, upstream, settle_timeout)
        report["worker_kills"] = processes.kills
        report["redis_restarts"] = 1 if state["redis_restarted"] else 0
    return report


def executed(step: str | None) -> bool:
    """Did the fake upstream do the work (answer 200, possibly after a delay)?"""
    return step is not None and (step == "200" or step.startswith("sleep"))


def settle(
    base_url: str, api_key: str, accepted: dict[str, str], upstream: FakeUpstream, timeout: float
) -> dict:
    """Wait for every accepted request to end, then count outcomes and duplicates."""
    auth = {"Authorization": f"Bearer {api_key}"}
    final: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline and len(final) < len(accepted):
            for key, request_id in accepted.items():
                if key in final:
                    continue
                try:
                    body = client.get(f"{base_url}/v1/requests/{request_id}", headers=auth).json()
                except (httpx.TransportError, ValueError):
                    continue
                if body.get("status") in ("succeeded", "failed", "canceled", "expired"):
                    final[key] = body
            time.sleep(1)
    successes = Counter(
        (record.body or {}).get("user")
        for record in upstream.requests
        if record.path == "/v1/chat/completions" and executed(record.step)
    )
    duplicates = []
    for key, count in successes.items():
        if key in accepted and count > 1:
            attempts = final.get(key, {}).get("attempts", [])
            explained = any(a["error_code"] == "worker_lost" for a in attempts)
            duplicates.append(
                {
                    "idempotency_key": key,
                    "request": accepted[key],
                    "upstream_executions": count,
                    "explanation": "attempt in flight when its worker was killed"
                    if explained
                    else "UNEXPLAINED",
                    "attempts": [
                        f"{a['outcome']}/{a['status_code']}/{a['error_code']}" for a in attempts
                    ],
                }
            )
    statuses = Counter(body["status"] for body in final.values())
    return {
        "accepted": len(accepted),
        "succeeded": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "other_terminal": statuses.get("canceled", 0) + statuses.get("expired", 0),
        "lost": len(accepted) - len(final),
        "duplicate_executions": len(duplicates),
        "unexplained_duplicates": sum(d["explanation"] == "UNEXPLAINED" for d in duplicates),
        "duplicates": duplicates,
    }


def print_report(report: dict) -> None:
    for name in (
        "accepted",
        "succeeded",
        "failed",
        "other_terminal",
        "lost",
        "worker_kills",
        "redis_restarts",
        "duplicate_executions",
        "unexplained_duplicates",
    ):
        print(f"{name:>24}: {report[name]}")
    for duplicate in report["duplicates"]:
        print(
            f"  duplicate {duplicate['request']} ({duplicate['idempotency_key']}): "
            f"{duplicate['upstream_executions']} executions — {duplicate['explanation']}; "
            f"attempts: {', '.join(duplicate['attempts']) or 'none'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--rate", type=float, default=20, help="requests per second")
    parser.add_argument("--kill-every", type=float, default=4, help="seconds between kills")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    report = run(
        duration=args.duration, rate=args.rate, kill_every=args.kill_every, workers=args.workers
    )
    print_report(report)
    return 0 if report["lost"] == 0 and report["unexplained_duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
