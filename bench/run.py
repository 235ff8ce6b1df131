"""`make bench` (`python -m bench.run [--quick] [...]`): what ReqRun adds over the upstream.

Starts the stack in a throw-away directory (bench/stack.py), three fake upstreams (0 ms,
200 ms, 2 s) and one enterprise tenant per upstream, then runs rounds of batches from a
separate load-generator process (bench/load.py). In each round every scenario runs
direct-to-upstream and through ReqRun back to back, in alternating order, so whatever
else the machine is doing lands on both sides. Prints a table and writes JSON to
bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import history, procstat, report
from bench.figures import CPU_GROUPS, SWITCH_GROUPS, figures, soak_figures
from bench.stack import PROVIDER_KEY, Stack, StackError, bootstrap, spawn, start
from devstack.__main__ import say

FAST, SLOW, SLEEPY = 0, 200, 2000  # upstream delays, ms
BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello to the benchmark in five words."},
        ],
    }
)
DRAIN_TIMEOUT_SECONDS = 120
WAITERS_TIMEOUT_SECONDS = 180
SOAK_CHUNKS = 20  # RSS is read between chunks of the soak
SOAK_WARMUP_FRACTION = 0.1  # growth is counted from the end of the soak's first tenth
PURGE_BATCH_SECONDS = 1.0  # accepts run in batches this long while the purge runs


class BenchInterrupted(Exception):
    """Ctrl-C, SIGTERM or the overall time limit: stop everything and exit non-zero."""


@dataclass
class Config:
    rounds: int
    seconds: float  # each c=1 and c=50 (0 ms) batch
    slow_seconds: float  # each c=50 batch against the 200 ms upstream
    async_seconds: float
    warmup: float  # discarded at the start of every batch
    concurrency: int
    waiters: int
    web_workers: int
    worker_processes: int
    worker_concurrency: int
    db_pool_max_size: int
    time_limit: int
    quick: bool
    strict: bool
    keep: bool
    profile: str
    soak: int
    history: int
    before: str


def parse_args(argv: list[str]) -> Config:
    def default(name: str, value):
        return type(value)(os.environ.get(f"BENCH_{name.upper()}", value))

    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of ~1.5 minutes")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, help="c=1 and c=50 batch length (default 4)")
    parser.add_argument("--slow-seconds", type=float, help="200 ms upstream batch (default 5)")
    parser.add_argument("--async-seconds", type=float, help="async accept batch (default 3)")
    parser.add_argument("--warmup", type=float, help="discarded per batch (default 0.5 s)")
    parser.add_argument("--concurrency", type=int, default=default("concurrency", 50))
    parser.add_argument("--waiters", type=int, help="wait-mode requests held at once (500)")
    parser.add_argument(
        "--web-workers",
        type=int,
        default=default("web_workers", 1),
        help="uvicorn --workers (default 1)",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=default("worker_processes", 1),
        help="Celery worker processes, each the Procfile's worker line (default 1)",
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=default("worker_concurrency", 100),
        help="Celery worker threads, WORKER_CONCURRENCY (default 100)",
    )
    parser.add_argument(
        "--db-pool-max-size",
        type=int,
        default=default("db_pool_max_size", 0),
        help="DB_POOL_MAX_SIZE per process (default: worker threads + 10, so no worker "
        "thread waits for a database connection)",
    )
    parser.add_argument(
        "--time-limit",
        type=int,
        default=default("time_limit", 600),
        help="abort the whole run after this many seconds (default 600)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the throw-away directory (process logs) and print it",
    )
    parser.add_argument(
        "--profile",
        default=os.environ.get("BENCH_PROFILE", ""),
        metavar="DIR",
        help="py-spy the web and worker during the c=50 "
        "through batches of round 1 and write collapsed stacks to DIR",
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=default("soak", 0),
        metavar="N",
        help="instead of the scenarios: N wait-mode requests at c=50 against the 0 ms "
        "upstream, the web and worker RSS read as they run (default off; the issue's soak "
        "is 200000)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=default("history", 0),
        metavar="N",
        help="write N finished requests with their attempts before measuring, then run "
        "the retention purge of one day of them while accepts run (default off)",
    )
    parser.add_argument(
        "--before",
        default=os.environ.get("BENCH_BEFORE", ""),
        metavar="JSON",
        help="a bench/results/*.json of an earlier run, printed beside this one's targets",
    )
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0", "false")

    def pick(name: str, full, short):
        """The flag if given, else BENCH_<NAME>, else the full or quick default."""
        given = getattr(args, name)
        return given if given is not None else default(name, short if quick else full)

    return Config(
        rounds=pick("rounds", 3, 1),
        seconds=pick("seconds", 4.0, 3.0),
        slow_seconds=pick("slow_seconds", 5.0, 3.0),
        async_seconds=pick("async_seconds", 3.0, 2.0),
        warmup=pick("warmup", 0.5, 0.3),
        concurrency=args.concurrency,
        waiters=pick("waiters", 500, 100),
        web_workers=args.web_workers,
        worker_processes=args.worker_processes,
        worker_concurrency=args.worker_concurrency,
        db_pool_max_size=args.db_pool_max_size or args.worker_concurrency + 10,
        # A soak of N requests at ~150/s takes N/150 s; never cut it short by default.
        time_limit=max(args.time_limit, 300 + args.soak // 60 + args.history // 2_000),
        quick=quick,
        strict=args.strict,
        keep=args.keep,
        profile=args.profile,
        soak=args.soak,
        history=args.history,
        before=args.before,
    )


class Bench:
    def __init__(self, config: Config, stack: Stack, exit_stack: ExitStack) -> None:
        self.config = config
        self.stack = stack
        self.keys = {
            delay: bootstrap(stack, email=f"bench-{delay}ms@example.com", upstream_url=url)
            for delay, url in stack.upstreams.items()
        }
        self.load = spawn(
            exit_stack,
            stack,
            "load",
            [sys.executable, "-m", "bench.load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    # ------------------------------------------------------------------ one batch

    def batch(
        self,
        side: str,
        delay: int,
        *,
        concurrency: int,
        seconds: float = 0.0,
        total: int = 0,
        requests: int = 0,
        respond_async: bool = False,
        timeout: float = 60.0,
    ) -> dict:
        if side == "direct":
            url = self.stack.upstreams[delay] + "/chat/completions"
            headers = {"Authorization": f"Bearer {PROVIDER_KEY}"}
        else:
            url = self.stack.web_url + "/v1/chat/completions"
            headers = {"Authorization": f"Bearer {self.keys[delay]}"}
        headers["Content-Type"] = "application/json"
        if respond_async:
            headers["Prefer"] = "respond-async"
        command = {
            "url": url,
            "headers": headers,
            "body": BODY,
            "concurrency": concurrency,
            "duration": seconds,
            "warmup": self.config.warmup if seconds else 0.0,
            "total": total,
            "requests": requests,
            "timeout": timeout,
            "expect": 202 if respond_async else 200,
        }
        opened_before = self.stack.connections_opened()
        switches_before = self._switches()
        cpu_before = self._cpu()
        busy_before, began = procstat.machine_busy_seconds(), time.monotonic()
        self.load.popen.stdin.write(json.dumps(command) + "\n")
        self.load.popen.stdin.flush()
        line = self.load.popen.stdout.readline()
        if not line:
            raise StackError(f"the load generator died. Log tail:\n{self.load.log_tail()}")
        result = json.loads(line)
        result["cpu_s"] = {group: after - cpu_before[group] for group, after in self._cpu().items()}
        result["thread_switches"] = {
            group: after - switches_before[group] for group, after in self._switches().items()
        }
        # CPU the rest of the machine took meanwhile: other people's work is noise here.
        result["cpu_s"]["other"] = (
            procstat.machine_busy_seconds() - busy_before - sum(result["cpu_s"].values())
        )
        result["elapsed_s"] = time.monotonic() - began
        # Less the one connection the reading itself opens.
        result["connections_opened"] = {
            server: count - opened_before[server] - 1
            for server, count in self.stack.connections_opened().items()
        }
        self.stack.check_alive()
        return result

    def _cpu(self) -> dict[str, float]:
        return {group: procstat.cpu_seconds(self.stack.pids(group)) for group in CPU_GROUPS}

    def _switches(self) -> dict[str, int]:
        return {group: procstat.thread_switches(self.stack.pids(group)) for group in SWITCH_GROUPS}

    def pending(self, delay: int) -> int:
        response = httpx.get(
            self.stack.web_url + "/v1/usage",
            timeout=10,
            headers={"Authorization": f"Bearer {self.keys[delay]}"},
        )
        response.raise_for_status()
        return response.json()["used"]["pending"]

    # ------------------------------------------------------------------ scenarios

    def warm_up(self) -> None:
        """Open connections and fill caches in every process before anything is measured."""
        for delay in (FAST, SLOW):
            for side in ("direct", "through"):
                self.batch(side, delay, concurrency=1, seconds=0.5)
                self.batch(side, delay, concurrency=self.config.concurrency, seconds=1.0)

    def async_round(self) -> dict:
        started = time.monotonic()
        result = self.batch(
            "through",
            FAST,
            concurrency=self.config.concurrency,
            seconds=self.config.async_seconds,
            respond_async=True,
        )
        deadline = started + DRAIN_TIMEOUT_SECONDS
        while (left := self.pending(FAST)) and time.monotonic() < deadline:
            time.sleep(0.1)
        result["drain_s"] = time.monotonic() - started
        result["left_pending"] = left
        return result

    def waiters(self) -> dict:
        """N wait-mode requests at once against the 2 s upstream: all must be served."""
        n = self.config.waiters
        direct = self.batch(
            "direct", SLEEPY, concurrency=n, total=n, timeout=WAITERS_TIMEOUT_SECONDS
        )
        web = self.stack.pids("web")
        before = procstat.rss_bytes(web)
        with procstat.PeakMemory(web) as memory:
            through = self.batch(
                "through", SLEEPY, concurrency=n, total=n, timeout=WAITERS_TIMEOUT_SECONDS
            )
        return {
            "direct": direct,
            "through": through,
            "web_rss_before": before,
            "web_peak_rss": memory.peak,
        }

    def soak(self) -> dict:
        """`--soak N`: N wait-mode requests at c=50, web and worker RSS read between chunks."""
        c = self.config
        chunk = max(1, c.soak // SOAK_CHUNKS)
        web, worker = self.stack.pids("web"), self.stack.pids("worker")

        def sample(done: int) -> dict:
            return {
                "requests": done,
                "web": procstat.rss_bytes(web),
                "worker": procstat.rss_bytes(worker),
                "worker_threads": procstat.threads(worker),
            }

        samples = [sample(0)]
        batches, done = [], 0
        while done < c.soak:
            size = min(chunk, c.soak - done)
            batches.append(self.batch("through", FAST, concurrency=c.concurrency, requests=size))
            done += size
            samples.append(sample(done))
            say(
                f"soak {done:,}/{c.soak:,}: web {samples[-1]['web'] / 2**20:.1f} MB, "
                f"worker {samples[-1]['worker'] / 2**20:.1f} MB, "
                f"{samples[-1]['worker_threads']} worker threads"
            )
        return {
            "batches": batches,
            "samples": samples,
            "warmup_requests": c.soak * SOAK_WARMUP_FRACTION,
        }

    def purge_under_load(self) -> dict:
        """`--history`: async accepts before and while the retention purge deletes a day."""
        c = self.config
        with history.LockWaits(self.stack) as quiet_locks:  # accepts wait on each other too
            quiet = [
                self.batch(
                    "through",
                    FAST,
                    concurrency=c.concurrency,
                    seconds=PURGE_BATCH_SECONDS,
                    respond_async=True,
                )
                for _ in range(3)
            ]
        with history.LockWaits(self.stack) as locks:
            purge = history.start_purge(self.stack)
            began, during = time.monotonic(), []
            try:
                while purge.poll() is None:
                    during.append(
                        self.batch(
                            "through",
                            FAST,
                            concurrency=c.concurrency,
                            seconds=PURGE_BATCH_SECONDS,
                            respond_async=True,
                        )
                    )
            finally:
                deleted = history.finish_purge(purge)
        return {
            "quiet": quiet,
            "during": during,
            "purge_s": time.monotonic() - began,
            "deleted": deleted,
            "lock_waits": locks.summary(),
            "quiet_lock_waits": quiet_locks.summary(),
        }

    def run(self) -> dict:
        c = self.config
        if c.history:
            days = history.enterprise_retention_days()
            say(f"history: writing {c.history:,} finished requests over {days + 1} days")
            seeded = history.seed(self.stack, self.keys[FAST], c.history, days)
        say("warming up")
        self.warm_up()
        if c.soak:
            return {"soak": self.soak()}
        batches = self._rounds()
        if c.history:
            batches["history"] = {"seeded": seeded, **self.purge_under_load()}
        return batches

    def _rounds(self) -> dict:
        c = self.config
        paired = [
            ("c1_fast", FAST, 1, c.seconds),
            ("c50_fast", FAST, c.concurrency, c.seconds),
            ("c50_slow", SLOW, c.concurrency, c.slow_seconds),
        ]
        batches: dict = {name: {"direct": [], "through": []} for name, *_ in paired}
        batches["async_accept"] = []
        for number in range(c.rounds):
            # ABBA: the side that went second last round goes first now.
            sides = ("direct", "through") if number % 2 == 0 else ("through", "direct")
            for name, delay, concurrency, seconds in paired:
                for side in sides:
                    profiling = bool(c.profile) and number == 0 and side == "through"
                    with Profiler(
                        self.stack,
                        c.profile,
                        name,
                        seconds + c.warmup,
                        enabled=profiling and concurrency > 1,
                    ):
                        batches[name][side].append(
                            self.batch(side, delay, concurrency=concurrency, seconds=seconds)
                        )
            with Profiler(
                self.stack,
                c.profile,
                "async_accept",
                c.async_seconds + c.warmup,
                enabled=bool(c.profile) and number == 0,
            ):
                batches["async_accept"].append(self.async_round())
            say(f"round {number + 1}/{c.rounds} done")
        say(f"{c.waiters} waiters against the 2 s upstream")
        batches["waiters"] = self.waiters()
        return batches


class Profiler:
    """py-spy on the web and worker trees for one batch (when --profile DIR is given)."""

    def __init__(
        self, stack: Stack, directory: str, label: str, seconds: float, *, enabled: bool
    ) -> None:
        self.commands: list[list[str]] = []
        self.running: list[subprocess.Popen] = []
        if not enabled:
            return
        py_spy = shutil.which("py-spy", path=stack.env["PATH"])
        if py_spy is None:
            raise StackError("--profile needs py-spy: .venv/bin/pip install py-spy")
        Path(directory).mkdir(parents=True, exist_ok=True)
        for name in ("web", "worker"):
            output = Path(directory) / f"{label}-{name}.txt"
            self.commands.append(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(stack.pids(name)[0]),
                    "--subprocesses",
                    "--gil",  # only the thread holding the GIL: where Python spends CPU
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--duration",
                    str(math.ceil(seconds)),
                    "--nonblocking",
                    "--output",
                    str(output),
                ]
            )

    def __enter__(self) -> Profiler:
        self.running = [
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for command in self.commands
        ]
        if self.running:
            time.sleep(0.5)  # attached before the batch starts
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str]) -> int:
    config = parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="reqrun-bench-"))

    def interrupt(signum, frame):
        raise BenchInterrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(config.time_limit)
    began = time.monotonic()
    try:
        with ExitStack() as exit_stack:
            stack = start(
                exit_stack,
                directory,
                delays=[FAST, SLOW, SLEEPY],
                web_workers=config.web_workers,
                worker_processes=config.worker_processes,
                worker_concurrency=config.worker_concurrency,
                db_pool_max_size=config.db_pool_max_size,
            )
            database = stack.database_durability()
            try:
                batches = Bench(config, stack, exit_stack).run()
            finally:
                # A second Ctrl-C must not cut the clean-up short and leave orphans.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                say("stopping the stack")
        if config.soak:
            scenarios, errors = soak_figures(batches["soak"])
        else:
            scenarios, errors = figures(config.waiters, batches)
        results = {
            "config": asdict(config),
            "machine": report.machine(),
            "database": database,
            "duration_s": time.monotonic() - began,
            "scenarios": scenarios,
            "errors": errors,
        }
        before = json.loads(Path(config.before).read_text()) if config.before else None
        print(report.render(results, before))
        path = report.write(results, suffix="-soak" if config.soak else "")
        print(f"results: bench/results/{path.name} · whole run {results['duration_s']:.0f} s")
        return 1 if config.strict and report.missed(results) else 0
    except (KeyboardInterrupt, BenchInterrupted) as stop:
        say(f"interrupted ({str(stop) or 'Ctrl-C'}); everything the bench started is stopped")
        return 130
    except StackError as error:
        say(str(error))
        return 2
    finally:
        signal.alarm(0)
        if config.keep:
            say(f"logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
