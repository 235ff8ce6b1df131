"""A deploy as the README describes it, in a checkout with no ./.data/: external PostgreSQL
and Redis, `migrate`, `collectstatic`, then the three Procfile lines exactly as written.

A retry scheduled in the database (backoff past the inline limit) must complete, which
needs beat, the sweeper and a worker all running.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis

from core import watchdog
from devstack.__main__ import read_procfile
from devstack.servers import free_port
from tests.conftest import WorkerProcess, fresh_database, separate_redis_db, wait_until
from tests.fake_upstream import FakeUpstream
from tests.tcp_proxy import FreezingProxy

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
NOT_DEPLOYED = shutil.ignore_patterns(
    ".venv", ".data", ".git", "__pycache__", "staticfiles", "*.egg-info", "node_modules"
)

TERMINAL = ("succeeded", "failed", "canceled", "expired")

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]


class Deploy:
    def __init__(self, checkout: Path, env: dict, logs: Path):
        self.checkout = checkout
        self.env = env
        self.logs = logs
        self.processes: dict[str, subprocess.Popen] = {}

    def manage(self, *args: str) -> str:
        return subprocess.run(
            ["python", "manage.py", *args],
            cwd=self.checkout,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout

    def start(self, name: str, command: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.checkout,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def deploy(tmp_path, django_db_setup, django_db_blocker):
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_DEPLOYED, symlinks=True)
    assert not (checkout / ".data").exists()
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        with django_db_blocker.unblock():
            database_url = fresh_database(stack)
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("STATIC_ROOT", "PYTHONPATH")
        }
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=separate_redis_db(9),
            PORT=str(free_port()),
            WORKER_CONCURRENCY="4",
            REQRUN_WATCHDOG_INTERVAL_SECONDS="2",
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        deployment = Deploy(checkout, env, logs)
        stack.callback(deployment.stop)
        yield deployment


def test_a_fresh_deploy_runs_a_retry_scheduled_in_the_database(deploy):
    with ThreadPoolExecutor(max_workers=1) as other:
        collected = other.submit(deploy.manage, "collectstatic", "--no-input")  # no database
        deploy.manage("migrate", "--no-input")
        collected.result()
    procfile = read_procfile(deploy.checkout)
    assert set(procfile) == {"web", "worker", "beat"}
    for name, command in procfile.items():
        deploy.start(name, command)
    base_url = f"http://127.0.0.1:{deploy.env['PORT']}"

    def web_up():
        try:
            return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    with FakeUpstream() as upstream:
        # While the processes boot: the project needs only the migrated database.
        bootstrapped = json.loads(
            deploy.manage(
                "bootstrap_project",
                "--email",
                "deploy@example.com",
                "--upstream-url",
                upstream.base_url,
                "--upstream-key",
                "sk-deploy-provider-key",
                "--plan",
                "enterprise",
            )
            .strip()
            .splitlines()[-1]
        )
        wait_until(
            web_up, timeout=60, interval=0.5, message=f"web never answered: {deploy.log('web')}"
        )
        auth = {"Authorization": f"Bearer {bootstrapped['api_key']}"}
        # 503 with Retry-After: 3 twice, then 200: each backoff is past the 2 s the worker
        # waits inline, so both retries are scheduled in the database for the sweeper.
        accepted = httpx.post(
            f"{base_url}/v1/chat/completions",
            headers={**auth, "Prefer": "respond-async"},
            json={
                "model": "script:503ra3,503ra3,200",
                "messages": [{"role": "user", "content": "deploy"}],
            },
            timeout=10,
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["id"]

        def finished():
            body = httpx.get(f"{base_url}/v1/requests/{request_id}", headers=auth, timeout=10)
            return body.json() if body.json()["status"] in TERMINAL else None

        try:
            final = wait_until(finished, timeout=90, interval=0.5)
        except AssertionError as error:
            raise AssertionError(
                "the scheduled retry never ran\n"
                + "\n".join(f"--- {name}\n{deploy.log(name)}" for name in ("beat", "worker"))
            ) from error

    assert final["status"] == "succeeded"
    assert [attempt["status_code"] for attempt in final["attempts"]] == [503, 503, 200]
    assert deploy.processes["beat"].poll() is None, deploy.log("beat")
    assert not (deploy.checkout / ".data").exists()

    # The sweeper and the worker's watchdog canary keep /readyz green.
    def ready():
        return httpx.get(f"{base_url}/readyz", timeout=10).status_code == 200

    wait_until(ready, timeout=30, interval=1, message="/readyz did not answer 200")


@pytest.mark.timeout(120)
def test_a_worker_that_stops_consuming_exits_to_be_restarted(transactional_db):
    redis_port = int(os.environ["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    proxy = FreezingProxy(redis_port)
    worker = WorkerProcess(
        concurrency=2,
        extra_env={
            "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/8",
            "REQRUN_WATCHDOG_INTERVAL_SECONDS": "1",
            "REQRUN_WATCHDOG_TIMEOUT_SECONDS": "3",
        },
    )
    heartbeat = redis.Redis(port=redis_port, db=8)
    heartbeat.flushdb()
    worker.start()
    try:
        wait_until(
            lambda: heartbeat.keys("*heartbeat:worker"),
            timeout=60,
            interval=0.5,
            message="the worker never consumed its watchdog canary",
        )
        time.sleep(5)  # longer than the watchdog's timeout: a healthy worker stays
        assert worker.process.poll() is None

        proxy.frozen.set()

        assert worker.process.wait(timeout=60) == watchdog.EXIT_CODE
        assert "worker stopped consuming" in worker.log_path.read_text(errors="replace")
    finally:
        worker.stop()
        proxy.close()
        heartbeat.flushdb()
