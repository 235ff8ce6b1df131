"""A deploy that gets the order wrong: web, worker and beat started against a database with
no tables (a new database, `migrate` forgotten), then left with a migration pending (the
release's `migrate` still running). Each says why once, without a traceback, and does not
exit; the web answers 503 meanwhile; once `migrate` has run they work (core/schema.py)."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
import redis

from tests.conftest import (
    ROOT,
    BeatProcess,
    ProcfileWeb,
    WorkerProcess,
    fresh_database,
    separate_redis_db,
    wait_until,
)

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

NOT_MIGRATED = "the database schema is not migrated ("
FIX = "run `python manage.py migrate`"
UNAVAILABLE = '"dependency unavailable"'
# requests_app's last migration adds a column to every request's row.
BEFORE_THE_LAST = ("requests_app", "0008_fewer_request_indexes")


@pytest.fixture
def release(tmp_path, django_db_blocker):
    """A new, empty database and its own Redis database; the processes' settings for both."""
    with ExitStack() as stack:
        with django_db_blocker.unblock():
            database_url = fresh_database(stack)
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": separate_redis_db(6),
            "REQRUN_WATCHDOG_INTERVAL_SECONDS": "1",
            "REQRUN_SWEEP_INTERVAL_SECONDS": "0.5",
        }
        heartbeats = redis.Redis.from_url(env["REDIS_URL"])
        heartbeats.flushdb()  # none left by an earlier run may pass for these processes'
        stack.callback(heartbeats.flushdb)
        yield env, stack


def migrate(env: dict, *target: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", *target],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_processes_started_before_migrate_wait_for_it_then_work(release, tmp_path):
    env, stack = release
    web = ProcfileWeb(tmp_path / "web.log", **env)
    worker = WorkerProcess(concurrency=2, extra_env=env, log_path=tmp_path / "worker.log")
    beat = BeatProcess(extra_env=env, log_path=tmp_path / "beat.log")
    for process in (web, worker, beat):
        stack.callback(process.stop)
    worker.start()
    beat.start()
    web.start()
    logs = {"web": web.log_path, "worker": worker.log_path, "beat": beat.log_path}

    def said_why(name):
        text = logs[name].read_text(errors="replace")
        return NOT_MIGRATED in text and FIX in text

    for name in logs:
        wait_until(
            lambda name=name: said_why(name),
            timeout=60,
            interval=0.2,
            message=f"{name} did not say the schema is not migrated: "
            + logs[name].read_text(errors="replace")[-3000:],
        )

    def answers_503_naming_the_schema():
        before = web.log_path.read_text().count(UNAVAILABLE)
        assert httpx.get(f"{web.url}/healthz").status_code == 200
        ready = httpx.get(f"{web.url}/readyz")
        assert ready.status_code == 503 and ready.json()["down"] == ["schema"], ready.text
        assert ready.json()["pending_migrations"] > 0
        api = httpx.get(f"{web.url}/v1/models", headers={"Authorization": "Bearer rr_abc_def"})
        assert api.status_code == 503, api.text
        assert api.json()["error"]["code"] == "service_unavailable"
        page = httpx.get(f"{web.url}/app/account/", cookies={"sessionid": "x" * 32})
        assert page.status_code == 503, page.text[:500]
        # One warning for each of the two, not a traceback, not two for one page.
        warned = web.log_path.read_text().count(UNAVAILABLE) - before
        assert warned == 2, web.log_path.read_text()[-3000:]

    answers_503_naming_the_schema()  # no tables at all
    migrate(env, *BEFORE_THE_LAST)
    answers_503_naming_the_schema()  # one migration pending
    assert worker.process.poll() is None and beat.process.poll() is None

    migrate(env)

    def ready():
        answer = httpx.get(f"{web.url}/readyz")
        return answer.status_code == 200 or None

    wait_until(
        ready,
        timeout=30,
        interval=0.2,
        message="not ready after migrate: "
        + httpx.get(f"{web.url}/readyz").text
        + "".join(f"\n--- {name}\n{path.read_text()[-2000:]}" for name, path in logs.items()),
    )
    for name, path in logs.items():
        text = path.read_text(errors="replace")
        assert "Traceback" not in text, f"{name}: {text[-3000:]}"
        assert text.count(NOT_MIGRATED) == 1, f"{name}: {text[-3000:]}"


OPERATOR_COMMANDS = {
    "bootstrap_project": [
        "--email",
        "ops@example.com",
        "--upstream-url",
        "https://api.openai.com/v1",
        "--upstream-key",
        "sk-provider-key-zzz",
    ],
    "purge_expired_data": [],
    "rotate_encryption_keys": [],
}


def run_commands(env: dict, commands: dict[str, list[str]]) -> dict:
    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", name, *commands[name]],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=len(commands)) as side_by_side:
        return dict(zip(commands, side_by_side.map(run, commands), strict=True))


def test_operator_commands_on_an_unmigrated_database_say_so_in_one_line(release):
    env, _ = release

    for name, ran in run_commands(env, OPERATOR_COMMANDS).items():
        assert ran.returncode == 1, (name, ran.stderr)
        assert ran.stdout == "", name
        said = ran.stderr.splitlines()
        assert len(said) == 1 and NOT_MIGRATED in said[0] and FIX in said[0], (name, said)


def test_operator_commands_on_a_database_that_does_not_answer_say_so_in_one_line():
    from devstack.servers import free_port

    port = free_port()
    env = {"DATABASE_URL": f"postgres://reqrun:db-password-zzz@127.0.0.1:{port}/reqrun"}

    ran = run_commands(env, {**OPERATOR_COMMANDS, "migrate": ["--no-input"]})
    for name, result in ran.items():
        assert result.returncode == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr and "zzz" not in result.stderr, name
        # Beside it, psycopg's pool logs (from its own thread) why it could not connect.
        assert (
            f"CommandError: PostgreSQL at 127.0.0.1:{port} does not answer: check DATABASE_URL "
            "and that the server is up, then run the command again."
        ) in result.stderr.splitlines(), name
