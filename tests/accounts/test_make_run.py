"""`make run`'s launcher on a fresh data directory: serves /healthz, becomes ready (beat, sweeper
and worker running), and Ctrl-C leaves nothing; with its web port taken it says so and starts
nothing."""

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from devstack.servers import free_port
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent


def launcher_env(tmp_path, **settings) -> dict[str, str]:
    """The environment without DATABASE_URL / REDIS_URL (the launcher starts its own servers),
    on its own data directory and ports."""
    env = {
        key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        REQRUN_DEV_DATA_DIR=str(tmp_path / "data"),
        REQRUN_DEV_PG_PORT=str(free_port()),
        REQRUN_DEV_REDIS_PORT=str(free_port()),
        **settings,
    )
    return env


@pytest.mark.timeout(180)
def test_run_serves_health_becomes_ready_and_ctrl_c_stops_every_process(tmp_path):
    port = free_port()
    env = launcher_env(
        tmp_path, PORT=str(port), WORKER_CONCURRENCY="2", REQRUN_WATCHDOG_INTERVAL_SECONDS="2"
    )
    output = tmp_path / "output.log"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "devstack", "run"],
        cwd=ROOT,
        env=env,
        stdout=output.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=120, interval=0.5, message="make run never served /healthz")

        def ready():  # beat runs the sweeper and the worker answers its watchdog
            return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200

        wait_until(ready, timeout=60, interval=1, message="make run never became ready")
        started = psutil.Process(launcher.pid).children(recursive=True)
        server_pids = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert len(started) >= 3 and server_pids
        # Development runs with DEBUG on: the web is reachable from this machine only.
        listening = {
            conn.laddr
            for process in started
            for conn in process.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
        }
        assert listening and {address.ip for address in listening} == {"127.0.0.1"}

        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert launcher.wait(timeout=60) == 0
        survivors = [p for p in started if p.is_running() and p.status() != "zombie"]
        survivors += [psutil.Process(pid) for pid in server_pids if psutil.pid_exists(pid)]
        assert not [p for p in survivors if p.status() != psutil.STATUS_ZOMBIE]
        # Each process had ended before the launcher said so and stopped Redis and PostgreSQL.
        said = output.read_text()
        assert said.index("Finished server process") < said.index("all processes stopped")
        assert "lost its Redis connection" not in said
    finally:
        if launcher.poll() is None:  # a check failed: Ctrl-C, so nothing it started outlives it
            os.killpg(launcher.pid, signal.SIGINT)
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)


@contextmanager
def a_port_taken():
    """A loopback port another program listens on, for the block."""
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        yield other_program.getsockname()[1]


def devstack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m devstack COMMAND` run to its end, its output kept."""
    return subprocess.run(
        [sys.executable, "-m", "devstack", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_with_its_web_port_taken_says_which_setting_moves_it_and_starts_nothing(tmp_path):
    with a_port_taken() as port:
        launcher = devstack("run", launcher_env(tmp_path, PORT=str(port)))

    assert launcher.returncode == 2
    assert f"Port {port} is already taken by another program" in launcher.stderr
    assert "PORT=" in launcher.stderr and "make run" in launcher.stderr
    assert "is running at" not in launcher.stderr
    assert not (tmp_path / "data" / "postgres").exists()  # no server started, none left behind


def test_dev_servers_with_the_redis_port_taken_say_which_setting_moves_it(tmp_path):
    # `env` starts the dev servers and nothing else; with DATABASE_URL set, Redis alone.
    env = launcher_env(tmp_path, DATABASE_URL=os.environ["DATABASE_URL"])
    with a_port_taken() as port:
        launcher = devstack("env", {**env, "REQRUN_DEV_REDIS_PORT": str(port)})

    assert launcher.returncode == 2
    assert f"Port {port} is already taken by another program" in launcher.stderr
    assert "REQRUN_DEV_REDIS_PORT=" in launcher.stderr and "REDIS_URL" in launcher.stderr
    assert "export" not in launcher.stdout
