"""Run ReqRun locally: `python -m devstack run | test [pytest args] | env`.

`run`   starts the embedded PostgreSQL and Redis under ./.data/ (unless DATABASE_URL /
        REDIS_URL are set), migrates, then runs every Procfile process in the
        foreground; Ctrl-C stops them all and the servers it started.
`test`  starts a throw-away PostgreSQL + Redis pair, runs pytest against it, removes it.
`env`   starts the ./.data/ servers and prints `export` lines, for running the Procfile
        processes one by one in other terminals; `stop` stops them.
`check` verifies migrations are up to date and `check --deploy` passes with production-like
        settings.
`proc NAME` runs the Procfile's line NAME as this process, nothing started around it: the
        container image's entrypoint (Dockerfile), so the Procfile stays the one place the
        commands are written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from cryptography.fernet import Fernet

from devstack.servers import (
    EmbeddedPostgres,
    EmbeddedRedis,
    ServerError,
    free_port,
    port_in_use,
    port_taken,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("REQRUN_DEV_DATA_DIR", ROOT / ".data"))
DEV_PG_PORT = int(os.environ.get("REQRUN_DEV_PG_PORT", "54329"))
DEV_REDIS_PORT = int(os.environ.get("REQRUN_DEV_REDIS_PORT", "63799"))


def say(message: str) -> None:
    print(f"[reqrun] {message}", file=sys.stderr, flush=True)


def dev_secrets() -> dict[str, str]:
    """Development-only secrets, generated once and kept in ./.data/ (never committed)."""
    path = DATA / "dev-secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    DATA.mkdir(exist_ok=True)
    values = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "REQRUN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def start_servers(
    stack: ExitStack, directory: Path, pg_port: int, redis_port: int, *, discard: bool = False
) -> dict:
    """Start whichever embedded server the environment does not already point at. With
    `discard` (a throw-away directory, removed next) they stop without saving anything, and
    PostgreSQL does not flush its commits to disk; otherwise it is as durable as production."""
    env: dict[str, str] = {}
    if not os.environ.get("DATABASE_URL"):
        pg = EmbeddedPostgres(directory / "postgres", pg_port, durable=not discard)
        if pg.start():
            stack.callback(pg.stop, discard=discard)
            say(f"started PostgreSQL on 127.0.0.1:{pg_port}")
        else:
            say(f"reusing the PostgreSQL already running on 127.0.0.1:{pg_port}")
        env["DATABASE_URL"] = pg.url
    if not os.environ.get("REDIS_URL"):
        redis = EmbeddedRedis(directory / "redis", redis_port)
        if redis.start():
            stack.callback(redis.stop, discard=discard)
            say(f"started Redis on 127.0.0.1:{redis_port}")
        else:
            say(f"reusing the Redis already running on 127.0.0.1:{redis_port}")
        env["REDIS_URL"] = redis.url
    return env


def development_env() -> dict[str, str]:
    env = {
        "DEBUG": "true",
        # DEBUG pages show settings and tracebacks: serve them to this machine only.
        "REQRUN_BIND_ADDRESS": "127.0.0.1",
        "ALLOWED_HOSTS": "localhost,127.0.0.1,[::1]",
        "EMAIL_URL": "consolemail://",
        "REQRUN_ALLOW_PRIVATE_UPSTREAMS": "true",
    }
    env.update(dev_secrets())
    return {key: value for key, value in env.items() if not os.environ.get(key)}


def read_procfile(root: Path = ROOT) -> dict[str, str]:
    """The Procfile's processes by name, each command exactly as written."""
    processes = {}
    for line in (root / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = command.strip()
    return processes


def web_port(env: dict[str, str]) -> str:
    """The port the Procfile's web listens on."""
    return env.get("PORT", "8000")


def check_web_port_free(env: dict[str, str]) -> None:
    """Before anything starts: a web that cannot bind would stop every other process with it."""
    port = web_port(env)
    if port.isdigit() and port_in_use(int(port)):
        raise port_taken(int(port), what="the web", port_setting="PORT")


def run_processes(env: dict[str, str]) -> int:
    """Run every Procfile process in its own process group; stop all when one ends or on ^C."""
    children: dict[str, subprocess.Popen] = {}
    for name, command in read_procfile().items():
        # `exec`: the shell becomes the process, so waiting for the child waits for it. Else
        # SIGTERM ends the shell at once and the servers would stop under a process still
        # shutting down (or one that outlives it, like a beat stopped while it starts).
        children[name] = subprocess.Popen(  # noqa: S602 - Procfile lines are shell commands
            f"exec {command}", shell=True, env=env, cwd=ROOT, start_new_session=True
        )
        say(f"{name} started (pid {children[name].pid}): {command}")
    say(f"ReqRun is running at http://127.0.0.1:{web_port(env)}/ — press Ctrl-C to stop everything")

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                say(f"{name} exited with code {child.returncode}; stopping the rest")
                exit_code = child.returncode or 1
                stopping = True
        time.sleep(0.2)

    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop in time; killing it")
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    say("all processes stopped")
    return exit_code


def command_proc(args: list[str]) -> int:
    """Replace this process with the Procfile's line `args[0]` (its own environment)."""
    processes = read_procfile()
    if len(args) != 1 or args[0] not in processes:
        say(f"usage: python -m devstack proc {{{'|'.join(processes)}}}")
        return 2
    os.execvp("bash", ["bash", "-c", f"exec {processes[args[0]]}"])  # noqa: S606


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], env=env, cwd=ROOT, check=True)


def fresh_metrics_directory() -> Path:
    """Where `run`'s processes write their Prometheus figures: one directory, emptied at start."""
    directory = DATA / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def command_run() -> int:
    with ExitStack() as stack:
        env = {**os.environ, **development_env()}
        check_web_port_free(env)
        if not env.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics adds up every process
            env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_directory())
        env.update(start_servers(stack, DATA, DEV_PG_PORT, DEV_REDIS_PORT))
        manage(env, "migrate", "--no-input", "-v", "0")
        manage(env, "collectstatic", "--no-input", "-v", "0")
        return run_processes(env)


def command_env() -> int:
    with ExitStack() as stack:
        env = development_env()
        env.update(start_servers(stack, DATA, DEV_PG_PORT, DEV_REDIS_PORT))
        stack.pop_all()  # leave the servers running for the other terminals
    for key, value in env.items():
        print(f"export {key}='{value}'")
    say("servers left running; stop them with `python -m devstack stop`")
    return 0


def command_stop() -> int:
    EmbeddedPostgres(DATA / "postgres", DEV_PG_PORT).stop()
    EmbeddedRedis(DATA / "redis", DEV_REDIS_PORT).stop()
    say("embedded servers stopped")
    return 0


def production_like_env() -> dict[str, str]:
    """Settings as a real deployment would have them, for `check --deploy`."""
    return {
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "REQRUN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "reqrun.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://reqrun.example.com",
        "EMAIL_URL": "smtp+tls://mailer:secret@smtp.example.com:587",
        "SECURE_SSL_REDIRECT": "true",
    }


def command_check() -> int:
    """Migrations up to date and a deployment check without warnings."""
    directory = Path(tempfile.mkdtemp(prefix="reqrun-check-"))
    try:
        with ExitStack() as stack:
            env = {**os.environ, **development_env()}
            env.update(start_servers(stack, directory, free_port(), free_port(), discard=True))
            manage(env, "makemigrations", "--check", "--dry-run")
            manage({**env, **production_like_env()}, "check", "--deploy", "--fail-level", "WARNING")
        say("migrations and deployment checks passed")
        return 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def stop_child_on_termination(child: subprocess.Popen) -> None:
    """On SIGTERM (a CI timeout, `kill`), stop the child and unwind so the servers stop too."""

    def terminate(signum, frame):
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def command_test(pytest_args: list[str]) -> int:
    directory = Path(tempfile.mkdtemp(prefix="reqrun-test-"))
    try:
        with ExitStack() as stack:
            # Production settings (DEBUG off), except that the test client speaks plain http.
            env = {
                **os.environ,
                **development_env(),
                "DEBUG": "false",
                "SECURE_SSL_REDIRECT": "false",
                "STATIC_ROOT": str(directory / "static"),
            }
            env.update(start_servers(stack, directory, free_port(), free_port(), discard=True))
            manage(env, "collectstatic", "--no-input", "-v", "0")
            pytest = subprocess.Popen(
                [sys.executable, "-m", "pytest", *pytest_args], env=env, cwd=ROOT
            )
            stop_child_on_termination(pytest)
            return pytest.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("run", [])
    try:
        if command == "run":
            return command_run()
        if command == "test":
            return command_test(rest)
        if command == "env":
            return command_env()
        if command == "stop":
            return command_stop()
        if command == "check":
            return command_check()
        if command == "proc":
            return command_proc(rest)
    except ServerError as error:
        say(str(error))
        return 2
    except subprocess.CalledProcessError as error:
        say(f"set-up step failed: {' '.join(map(str, error.cmd))}")
        return error.returncode or 1
    say(f"unknown command {command!r}; use run, test, env, stop, check or proc")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
