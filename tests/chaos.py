"""Chaos run: load and streams through ReqRun while workers die, Redis dies and the upstream flaps.

    make chaos CHAOS_ARGS="--duration 60"
    python -m tests.chaos [--duration 120] [--rate 20] [--kill-every 4] [--workers 2]
                          [--streams 20] [--redis-kills 1] [--keep-logs]

--duration     seconds of load (then it waits up to 180 s for every request to end)
--rate         async requests sent per second
--kill-every   seconds between SIGKILLs of a random worker (restarted at once)
--workers      worker processes (each WORKER_CONCURRENCY=16 threads)
--streams      streaming calls kept in flight at all times (wait mode, a few seconds each)
--redis-kills  times Redis is SIGKILLed while workers hold requests, and restarted empty
--keep-logs    keep the processes' logs (they are kept anyway when the run fails)

It copies the checkout (the files git does not ignore: no `.data/`, no local state) into a
temporary directory, starts a throw-away PostgreSQL and Redis, migrates, and runs the
Procfile's `web`, `worker` and `beat` lines exactly as written under `bash -c`, as a deploy
would, restarting any that exits as a process manager would; an in-process fake upstream
answers with faults (503 then 200, dropped connections, slow answers, slow streams). It
sends async requests, each with its own Idempotency-Key, keeps streaming calls in flight
and reads each to its end, SIGKILLs a random worker every few seconds, and SIGKILLs Redis
(data thrown away) while workers hold requests. Then it waits for every accepted request to
end and reports: accepted, succeeded, failed, lost (not terminal at the end), duplicate
upstream executions with the explanation of each (an attempt in flight when its worker or
Redis was killed), and streams that completed, ended with one error event, or were spliced
from two attempts (their events carry more than one upstream id); and whether the account's
counters (its accepts this month, its unfinished requests) still equal the rows they count.

Exit code 0 means nothing was lost, every duplicate is explained, and every stream is
either one attempt's complete answer ending `data: [DONE]` (its request `succeeded`) or
ends with exactly one `event: error` and no `[DONE]` (its request `failed` with
`partial: true`), and neither counter drifted. Clients and servers use 127.0.0.1 (the web
process binds as the Procfile says); everything started is stopped at the end, by process
group, even on failure.
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
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from devstack.__main__ import development_env, read_procfile
from devstack.servers import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from tests.fake_upstream import FakeUpstream
from tests.fake_upstream.payloads import REPLY

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["script:503,200", "script:drop,200", "sleep-300", "gpt-test", "script:429ram200,200"]
# Six SSE events 500 ms apart: a stream lasts long enough for kills to land mid-stream.
STREAM_MODEL = "script:slowchunks500"
STREAM_KEY_PREFIX = "chaos-stream-"
TERMINAL = ("succeeded", "failed", "canceled", "expired")


def copy_checkout(target: Path) -> Path:
    """The working tree's files that git does not ignore (no .data/, no .venv/): what a deploy
    would ship, with the changes not committed yet, as the rest of the suite sees them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file() and not name.startswith(".data/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


class Stack:
    """The Procfile's processes, each started as written; any can be killed and restarted."""

    def __init__(self, checkout: Path, logs: Path, env: dict, workers: int):
        self.checkout = checkout
        self.logs = logs
        self.env = env
        self.commands = read_procfile()
        self.worker_count = workers
        self.web: subprocess.Popen | None = None
        self.beat: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.kills = 0
        self.exits: list[str] = []  # processes that ended without being killed, restarted
        self.lock = threading.Lock()
        self.stopping = False

    def spawn(self, name: str) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                ["bash", "-c", self.commands[name]],
                cwd=self.checkout,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> None:
        self.web = self.spawn("web")
        self.beat = self.spawn("beat")
        self.workers = [self.spawn("worker") for _ in range(self.worker_count)]
        port = int(self.env["PORT"])
        wait_for_port(port, timeout=60, what="web", log=self.logs / "web.log")

    def kill_random_worker(self) -> None:
        with self.lock:
            if self.stopping:
                return
            index = random.randrange(len(self.workers))
            os.killpg(self.workers[index].pid, signal.SIGKILL)
            self.workers[index].wait()
            self.kills += 1
            self.workers[index] = self.spawn("worker")

    def supervise(self) -> None:
        """Restart what ended on its own, as a process manager would (a worker whose consumer
        is gone exits on purpose), and remember it for the report."""
        with self.lock:
            if self.stopping:
                return
            for name in ("web", "beat"):
                process = getattr(self, name)
                if process.poll() is not None:
                    self.exits.append(f"{name} exited with {process.returncode}")
                    setattr(self, name, self.spawn(name))
            for index, process in enumerate(self.workers):
                if process.poll() is not None:
                    self.exits.append(f"worker exited with {process.returncode}")
                    self.workers[index] = self.spawn("worker")

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            processes = [p for p in [self.web, self.beat, *self.workers] if p]
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def manage(checkout: Path, env: dict, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=checkout,
        env=env,
        check=True,
        stdout=subprocess.PIPE,  # errors go to our stderr
        text=True,
    ).stdout


def bootstrap(checkout: Path, env: dict, upstream_url: str) -> str:
    output = manage(
        checkout,
        env,
        "bootstrap_project",
        "--email",
        "chaos@example.com",
        "--upstream-url",
        upstream_url,
        "--upstream-key",
        "sk-chaos-provider-key",
        "--plan",
        "enterprise",
    )
    return json.loads(output)["api_key"]


def send_load(
    base_url: str, api_key: str, accepted: dict[str, str], *, duration: float, rate: float
) -> None:
    """Record the accepted request id per idempotency key; refused or failed sends are not
    accepted."""
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
            time.sleep(1 / rate)
    client.close()


@dataclass
class StreamResult:
    key: str
    request_id: str | None
    kind: str  # complete | error | spliced | not_streamed | broken
    detail: str = ""


def read_events(response: httpx.Response) -> tuple[list[str | None], list[str]]:
    """The stream's events as (event names, data payloads), one entry per event."""
    names: list[str | None] = []
    payloads: list[str] = []
    name, data = None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                names.append(name)
                payloads.append("\n".join(data))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        names.append(name)
        payloads.append("\n".join(data))
    return names, payloads


def classify_stream(key: str, request_id: str, names: list, payloads: list[str]) -> StreamResult:
    """One attempt's complete answer, or one error event and no [DONE]; anything else is
    broken, and chunks from two upstream calls are a splice."""
    ids, content = set(), []
    for payload in payloads:
        if payload == "[DONE]":
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            return StreamResult(key, request_id, "broken", f"not JSON: {payload[:80]}")
        if "id" in event:
            ids.add(event["id"])
        for choice in event.get("choices") or []:
            content.append((choice.get("delta") or {}).get("content") or "")
    errors = names.count("error")
    done = "[DONE]" in payloads
    if len(ids) > 1:
        return StreamResult(key, request_id, "spliced", ", ".join(sorted(ids)))
    if errors == 0 and done and payloads[-1] == "[DONE]" and "".join(content) == REPLY:
        return StreamResult(key, request_id, "complete")
    if errors == 1 and not done and names[-1] == "error":
        return StreamResult(key, request_id, "error", json.loads(payloads[-1])["error"]["code"])
    return StreamResult(
        key, request_id, "broken", f"{errors} error events, [DONE]={done}, {len(payloads)} events"
    )


def read_one_stream(client: httpx.Client, base_url: str, api_key: str, key: str) -> StreamResult:
    body = {
        "model": STREAM_MODEL,
        "stream": True,
        "user": key,
        "messages": [{"role": "user", "content": f"chaos stream {key}"}],
    }
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
    request_id = None
    for _ in range(5):  # until accepted; the same key attaches to the same request
        try:
            with client.stream(
                "POST", f"{base_url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                request_id = response.headers.get("ReqRun-Request-Id")
                if request_id is None:  # refused before the accept
                    response.read()
                    time.sleep(0.5)
                    continue
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    response.read()
                    return StreamResult(key, request_id, "not_streamed", str(response.status_code))
                return classify_stream(key, request_id, *read_events(response))
        except httpx.TransportError as exc:
            if request_id is not None:  # the stream had started: the client saw it break
                return StreamResult(key, request_id, "broken", repr(exc))
            time.sleep(0.5)
    return StreamResult(key, None, "refused")


class StreamLoad:
    """Keeps `concurrency` streaming calls in flight until stopped, each read to its end."""

    def __init__(self, base_url: str, api_key: str, concurrency: int):
        self.base_url = base_url
        self.api_key = api_key
        self.concurrency = concurrency
        self.results: list[StreamResult] = []
        self.in_flight = 0
        self.lock = threading.Lock()
        self.counter = 0

    def run(self, stop: threading.Event) -> None:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for _ in range(self.concurrency):
                pool.submit(self.keep_streaming, stop)

    def keep_streaming(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=httpx.Timeout(10, read=60)) as client:
            while not stop.is_set():
                with self.lock:
                    key = f"{STREAM_KEY_PREFIX}{self.counter}"
                    self.counter += 1
                    self.in_flight += 1
                try:
                    result = read_one_stream(client, self.base_url, self.api_key, key)
                finally:
                    with self.lock:
                        self.in_flight -= 1
                self.results.append(result)


def running_requests(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM requests_app_request WHERE status = 'running'"
        ).fetchone()
    return row[0]


# What the account's counters say against the rows they count: the accepts this month (the
# run's requests, all made in it) and the requests not finished. Kept by the accept and
# the statements that end a request (core/stripes.py); any fault that made them drift
# would refuse the account's calls early, or let it past its caps.
COUNTER_DRIFT = """
SELECT
    (SELECT COALESCE(sum(accepted), 0) FROM projects_usagestripe)
        - (SELECT count(*) FROM requests_app_request),
    (SELECT COALESCE(sum(pending), 0) FROM requests_app_pendingstripe)
        - (SELECT count(*) FROM requests_app_request
           WHERE status IN ('queued', 'running', 'retrying'))
"""


def counter_drift(database_url: str) -> dict:
    with psycopg.connect(database_url, autocommit=True) as connection:
        accepted, pending = connection.execute(COUNTER_DRIFT).fetchone()
    return {"accepted_requests": int(accepted), "pending": int(pending)}  # sum() is numeric


class Chaos:
    """Worker SIGKILLs every `kill_every` seconds and Redis SIGKILLs while workers are busy."""

    def __init__(
        self, processes: Stack, redis: EmbeddedRedis, database_url: str, streams: StreamLoad
    ):
        self.processes = processes
        self.redis = redis
        self.database_url = database_url
        self.streams = streams
        self.kills_during_streams = 0
        self.redis_kills: list[dict] = []

    def run(self, stop: threading.Event, *, duration: float, kill_every: float, redis_kills: int):
        """Kills during the load; restarts what ends on its own until `stop`."""
        started = time.monotonic()
        next_kill = kill_every
        redis_at = [duration * (i + 1) / (redis_kills + 1) for i in range(redis_kills)]
        while not stop.is_set():
            self.processes.supervise()
            elapsed = time.monotonic() - started
            if next_kill <= elapsed < duration:
                next_kill += kill_every
                if self.streams.in_flight:
                    self.kills_during_streams += 1
                self.processes.kill_random_worker()
            if redis_at and elapsed >= redis_at[0]:
                redis_at.pop(0)
                self.kill_redis_while_busy()
            time.sleep(0.1)

    def kill_redis_while_busy(self, patience: float = 10) -> None:
        """SIGKILL Redis once workers hold requests; start it again on its port, empty."""
        deadline = time.monotonic() + patience
        while (running := running_requests(self.database_url)) == 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        streams = self.streams.in_flight
        pid = self.redis.running_pid()
        os.kill(pid, signal.SIGKILL)
        gone_by = time.monotonic() + 5
        while self.redis.running_pid() and time.monotonic() < gone_by:
            time.sleep(0.05)
        (self.redis.directory / "dump.rdb").unlink(missing_ok=True)  # everything is lost
        time.sleep(1)
        self.redis.start()
        self.redis_kills.append({"requests_running": running, "streams_in_flight": streams})


def start_thread(target, *args, **kwargs) -> tuple[threading.Thread, list]:
    """Start target in a thread; the list receives its exception, if any."""
    errors: list[BaseException] = []

    def call():
        try:
            target(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, errors


def process_env(checkout: Path, pg: EmbeddedPostgres, redis: EmbeddedRedis) -> dict:
    return {
        **os.environ,
        **development_env(),
        # The venv's python, celery and uvicorn, and the copy's code before any install.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(checkout),
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis.url,
        "PORT": str(free_port()),
        "WORKER_CONCURRENCY": "16",
        "REQRUN_LEASE_GRACE_SECONDS": "2",
        "REQRUN_SWEEP_INTERVAL_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
    }


def run(
    *,
    duration: float = 120,
    rate: float = 20,
    kill_every: float = 4,
    workers: int = 2,
    streams: int = 20,
    redis_kills: int = 1,
    settle_timeout: float = 180,
    keep_logs: bool = False,
) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="reqrun-chaos-"))
    logs = Path(tempfile.mkdtemp(prefix="reqrun-chaos-logs-"))
    report: dict = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, True)
        stack.callback(forget_logs, logs, report, keep_logs)
        checkout = copy_checkout(directory / "checkout")
        pg = EmbeddedPostgres(directory / "postgres", free_port())
        redis = EmbeddedRedis(directory / "redis", free_port())
        pg.start()
        stack.callback(pg.stop, discard=True)  # the directory is removed right after
        redis.start()
        stack.callback(redis.stop, discard=True)
        env = process_env(checkout, pg, redis)
        manage(checkout, env, "migrate", "--no-input", "-v", "0")
        upstream = stack.enter_context(FakeUpstream())
        processes = Stack(checkout, logs, env, workers)
        stack.callback(processes.stop)
        # The processes boot while the project is made; no request is sent before both.
        booting, boot_errors = start_thread(processes.start)
        stack.callback(booting.join)  # before processes.stop, should the bootstrap fail
        api_key = bootstrap(checkout, env, upstream.base_url)
        # Keep attempts short so a killed worker's lease runs out quickly.
        with psycopg.connect(pg.url, autocommit=True) as connection:
            connection.execute(
                "UPDATE projects_project SET attempt_timeout_seconds = 5, max_attempts = 10"
            )
        booting.join()
        for error in boot_errors:
            raise error
        base_url = f"http://127.0.0.1:{env['PORT']}"

        load_over, settled = threading.Event(), threading.Event()
        stream_load = StreamLoad(base_url, api_key, streams)
        chaos = Chaos(processes, redis, pg.url, stream_load)
        streaming, stream_errors = start_thread(stream_load.run, load_over)
        stack.callback(streaming.join)
        stack.callback(load_over.set)
        chaotic, chaos_errors = start_thread(
            chaos.run, settled, duration=duration, kill_every=kill_every, redis_kills=redis_kills
        )
        stack.callback(chaotic.join)
        stack.callback(settled.set)
        accepted: dict[str, str] = {}
        send_load(base_url, api_key, accepted, duration=duration, rate=rate)
        load_over.set()
        streaming.join()
        for result in stream_load.results:
            if result.request_id:
                accepted[result.key] = result.request_id
        final = settle(base_url, api_key, accepted, settle_timeout)
        settled.set()
        chaotic.join()
        for error in chaos_errors + stream_errors:
            raise error
        report.update(count_outcomes(accepted, final, upstream))
        report.update(count_streams(stream_load.results, final))
        report["worker_kills"] = processes.kills
        report["worker_kills_during_streams"] = chaos.kills_during_streams
        report["redis_kills"] = chaos.redis_kills
        report["process_exits"] = processes.exits
        report["counter_drift"] = counter_drift(pg.url)
    return report


def forget_logs(logs: Path, report: dict, keep: bool) -> None:
    """Logs are removed after a clean run unless asked for; a failed run keeps them."""
    if (keep or not passed(report)) and any(logs.iterdir()):
        print(f"the processes' logs are in {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)


def settle(base_url: str, api_key: str, accepted: dict[str, str], timeout: float) -> dict:
    """Each accepted request's final state, waiting for all to end (at most `timeout`)."""
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
                if body.get("status") in TERMINAL:
                    final[key] = body
            time.sleep(1)
    return final


def executed(step: str | None) -> bool:
    """Did the fake upstream do the work (answer 200, possibly slowly)?"""
    return step is not None and (step == "200" or step.startswith(("sleep", "slowchunks")))


# An earlier attempt of the request that ended this way was cut off while the upstream
# worked, its answer never used: the only causes of a second execution.
EXPLAINED_BY = {
    "worker_lost": "attempt in flight when its worker was killed",
    # A stream whose relay lost Redis before its first byte reached a client is retried.
    "redis_unavailable": "attempt in flight when Redis was killed",
}


def count_outcomes(accepted: dict[str, str], final: dict[str, dict], upstream) -> dict:
    successes = Counter(
        (record.body or {}).get("user")
        for record in upstream.requests
        if record.path == "/v1/chat/completions" and executed(record.step)
    )
    duplicates = []
    for key, count in successes.items():
        if key in accepted and count > 1:
            attempts = final.get(key, {}).get("attempts", [])
            causes = [
                EXPLAINED_BY[a["error_code"]] for a in attempts if a["error_code"] in EXPLAINED_BY
            ]
            duplicates.append(
                {
                    "idempotency_key": key,
                    "request": accepted[key],
                    "upstream_executions": count,
                    "explanation": causes[0] if causes else "UNEXPLAINED",
                    "attempts": [
                        f"{a['outcome']}/{a['status_code']}/{a['error_code']}" for a in attempts
                    ],
                }
            )
    statuses = Counter(body["status"] for body in final.values())
    streamed = [key for key in accepted if key.startswith(STREAM_KEY_PREFIX)]
    return {
        "accepted": len(accepted),
        "accepted_streams": len(streamed),
        "async_succeeded": sum(
            body["status"] == "succeeded"
            for key, body in final.items()
            if not key.startswith(STREAM_KEY_PREFIX)
        ),
        "succeeded": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "other_terminal": statuses.get("canceled", 0) + statuses.get("expired", 0),
        "lost": len(accepted) - len(final),
        "lost_requests": [accepted[key] for key in accepted if key not in final],
        "duplicate_executions": len(duplicates),
        "unexplained_duplicates": sum(d["explanation"] == "UNEXPLAINED" for d in duplicates),
        "duplicates": duplicates,
    }


def count_streams(results: list[StreamResult], final: dict[str, dict]) -> dict:
    """Stream outcomes, and each stream's request checked against what its client saw."""
    kinds = Counter(result.kind for result in results)
    problems = [
        f"{result.request_id or result.key}: {result.kind} {result.detail}"
        for result in results
        if result.kind in ("spliced", "broken")
    ]
    for result in results:
        body = final.get(result.key)
        if body is None:
            continue  # counted as lost
        if result.kind == "error" and not (body["status"] == "failed" and body["partial"]):
            problems.append(
                f"{result.request_id}: error event, but the request is {body['status']} "
                f"with partial={body['partial']}"
            )
        if result.kind == "complete" and body["status"] != "succeeded":
            problems.append(f"{result.request_id}: complete stream, request {body['status']}")
    return {
        "streams": len(results),
        "streams_complete": kinds["complete"],
        "streams_error": kinds["error"],
        "stream_error_codes": dict(
            Counter(result.detail for result in results if result.kind == "error")
        ),
        "streams_spliced": kinds["spliced"],
        "streams_broken": kinds["broken"],
        "streams_not_streamed": kinds["not_streamed"],
        "streams_refused": kinds["refused"],
        "stream_problems": problems,
    }


def passed(report: dict) -> bool:
    """Nothing lost, every duplicate explained, no stream spliced or malformed, no process
    that had to be restarted because it ended by itself (a Redis loss must not take a
    worker down), and the account's counters equal to what they count."""
    return (
        report.get("lost") == 0
        and report.get("counter_drift") == {"accepted_requests": 0, "pending": 0}
        and report.get("unexplained_duplicates") == 0
        and report.get("streams_spliced") == 0
        and report.get("stream_problems") == []
        and report.get("process_exits") == []
    )


def print_report(report: dict) -> None:
    for name in (
        "accepted",
        "accepted_streams",
        "async_succeeded",
        "succeeded",
        "failed",
        "other_terminal",
        "lost",
        "worker_kills",
        "worker_kills_during_streams",
        "duplicate_executions",
        "unexplained_duplicates",
        "counter_drift",
        "streams",
        "streams_complete",
        "streams_error",
        "streams_spliced",
        "streams_broken",
        "streams_not_streamed",
        "streams_refused",
    ):
        print(f"{name:>28}: {report[name]}")
    for code, count in report["stream_error_codes"].items():
        print(f"{'streams ending with':>28}: {code} × {count}")
    for kill in report["redis_kills"]:
        print(
            f"{'redis SIGKILL':>28}: while {kill['requests_running']} requests ran and "
            f"{kill['streams_in_flight']} streams were in flight"
        )
    for exit_ in report["process_exits"]:
        print(f"{'restarted':>28}: {exit_}")
    for request_id in report["lost_requests"]:
        print(f"  lost {request_id}")
    for duplicate in report["duplicates"]:
        print(
            f"  duplicate {duplicate['request']} ({duplicate['idempotency_key']}): "
            f"{duplicate['upstream_executions']} executions — {duplicate['explanation']}; "
            f"attempts: {', '.join(duplicate['attempts']) or 'none'}"
        )
    for problem in report["stream_problems"]:
        print(f"  stream {problem}")
    print("PASSED" if passed(report) else "FAILED")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--rate", type=float, default=20, help="requests per second")
    parser.add_argument("--kill-every", type=float, default=4, help="seconds between kills")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--streams", type=int, default=20, help="streams kept in flight")
    parser.add_argument("--redis-kills", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    report = run(
        duration=args.duration,
        rate=args.rate,
        kill_every=args.kill_every,
        workers=args.workers,
        streams=args.streams,
        redis_kills=args.redis_kills,
        keep_logs=args.keep_logs,
    )
    print_report(report)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
