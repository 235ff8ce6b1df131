"""The stack under test, started the way `make run` starts it, in a throw-away directory.

Embedded PostgreSQL and Redis (never the ones under ./.data/, never DATABASE_URL /
REDIS_URL), `migrate`, fake upstreams, then the Procfile's web, worker and beat with
DEBUG off. Every process is started in its own session and registered on an ExitStack,
so leaving the stack — normally, on an error or on Ctrl-C — stops each one by its PID.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis
from cryptography.fernet import Fernet

from devstack.__main__ import ROOT, read_procfile, say, start_servers
from devstack.servers import free_port, wait_for_port

STOP_TIMEOUT_SECONDS = 15
PROVIDER_KEY = "sk-bench"


class StackError(RuntimeError):
    """The stack could not start or a process died; the message says which and why."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    directory: Path
    env: dict[str, str]
    web_url: str = ""
    processes: dict[str, Process] = field(default_factory=dict)
    upstreams: dict[int, str] = field(default_factory=dict)  # delay ms -> base URL
    server_pids: dict[str, int] = field(default_factory=dict)  # postgres, redis

    def pids(self, *names: str) -> list[int]:
        """Root PIDs of the named processes (a Procfile name, "upstreams", "postgres", …)."""
        found = []
        for name in names:
            if name in self.server_pids:
                found.append(self.server_pids[name])
            elif name == "upstreams":
                found += [p.pid for n, p in self.processes.items() if n.startswith("upstream")]
            else:  # "worker" also names its copies "worker-2", "worker-3", …
                found += [
                    process.pid
                    for label, process in self.processes.items()
                    if label == name or label.startswith(name + "-")
                ]
        return found

    def connections_opened(self) -> dict[str, int]:
        """Connections PostgreSQL and Redis have accepted so far (for churn per request)."""
        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
            sessions = conn.execute("SELECT sum(sessions) FROM pg_stat_database").fetchone()[0]
        with redis.Redis.from_url(self.env["REDIS_URL"]) as client:
            received = client.info("stats")["total_connections_received"]
        return {"postgres": int(sessions or 0), "redis": int(received)}

    def database_durability(self) -> dict[str, str]:
        """PostgreSQL's settings that decide whether a commit is on disk when acknowledged."""
        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
            return {
                name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("fsync", "synchronous_commit", "full_page_writes")
            }

    def check_alive(self) -> None:
        for process in self.processes.values():
            if process.popen.poll() is not None:
                raise StackError(
                    f"{process.name} exited with code {process.popen.returncode}. "
                    f"Log tail:\n{process.log_tail()}"
                )


def bench_env(
    *, web_port: int, worker_concurrency: int, db_pool_max_size: int, directory: Path
) -> dict[str, str]:
    """Production settings (DEBUG off) with throw-away secrets, over plain loopback http."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "EMAIL_URL": "consolemail://",
        "REQRUN_ALLOW_PRIVATE_UPSTREAMS": "true",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "REQRUN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "PORT": str(web_port),
        "WORKER_CONCURRENCY": str(worker_concurrency),
        # Never fewer pooled connections than worker threads: the pool must not be what
        # caps the calls in flight.
        "DB_POOL_MAX_SIZE": str(db_pool_max_size),
    }


def _stop(process: Process) -> None:
    if process.popen.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.popen.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            say(f"{process.name} (pid {process.pid}) did not stop in time; killing it")
            os.killpg(process.pid, signal.SIGKILL)
            process.popen.wait()
    else:
        # The leader is gone; anything left in its group is ours to end too.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def spawn(
    exit_stack: ExitStack, stack: Stack, name: str, command: str | list[str], **popen_args
) -> Process:
    log = stack.directory / f"{name}.log"
    with open(log, "ab") as output:
        popen = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            env=stack.env,
            cwd=ROOT,
            stdout=popen_args.pop("stdout", output),
            stderr=output,
            start_new_session=True,
            **popen_args,
        )
    process = Process(name, popen, log)
    stack.processes[name] = process
    exit_stack.callback(_stop, process)
    return process


def manage(stack: Stack, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode:
        raise StackError(f"manage.py {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def bootstrap(stack: Stack, *, email: str, upstream_url: str) -> str:
    """A new enterprise tenant whose project calls `upstream_url`; returns its API key."""
    output = manage(
        stack,
        "bootstrap_project",
        "--email",
        email,
        "--upstream-url",
        upstream_url,
        "--upstream-key",
        PROVIDER_KEY,
        "--plan",
        "enterprise",
    )
    return json.loads(output.strip().splitlines()[-1])["api_key"]


def _wait_healthy(stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            if httpx.get(f"{stack.web_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise StackError(
        f"web did not answer /healthz within {timeout:.0f} s. Log tail:\n"
        f"{stack.processes['web'].log_tail()}"
    )


def start(
    exit_stack: ExitStack,
    directory: Path,
    *,
    delays: list[int],
    web_workers: int,
    worker_concurrency: int,
    db_pool_max_size: int,
    worker_processes: int = 1,
) -> Stack:
    web_port = free_port()
    stack = Stack(
        directory,
        bench_env(
            web_port=web_port,
            worker_concurrency=worker_concurrency,
            db_pool_max_size=db_pool_max_size,
            directory=directory,
        ),
    )
    stack.web_url = f"http://127.0.0.1:{web_port}"
    # Always throw-away servers: a benchmark must not write into anyone's database.
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
        stack.env.pop(name, None)
    stack.env.update(start_servers(exit_stack, directory, free_port(), free_port()))
    stack.server_pids["postgres"] = int(
        (directory / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0]
    )
    stack.server_pids["redis"] = int((directory / "redis" / "redis.pid").read_text().split()[0])

    say("migrating the throw-away database")
    manage(stack, "migrate", "--no-input", "-v", "0")
    for delay in delays:
        port = free_port()
        upstream = spawn(
            exit_stack,
            stack,
            f"upstream-{delay}ms",
            [
                sys.executable,
                "-m",
                "tests.fake_upstream",
                "--port",
                str(port),
                "--delay-ms",
                str(delay),
            ],
        )
        wait_for_port(port, timeout=20, what=f"fake upstream ({delay} ms)", log=upstream.log)
        stack.upstreams[delay] = f"http://127.0.0.1:{port}/v1"

    for name, command in read_procfile().items():
        if name == "web" and web_workers > 1:
            command += f" --workers {web_workers}"
        copies = worker_processes if name == "worker" else 1
        for copy in range(1, copies + 1):
            label = name if copy == 1 else f"{name}-{copy}"
            # `exec`: the PID we hold is the server itself, not a shell around it.
            spawn(exit_stack, stack, label, f"exec {command}")
            say(f"{label} started (pid {stack.processes[label].pid})")
    _wait_healthy(stack)
    return stack
