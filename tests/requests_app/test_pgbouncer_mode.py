"""With DB_SERVER_SIDE_BINDING=false (PgBouncer in transaction mode) the engine's statements
still run: accept, claim, conclude after a retry, a fatal answer, a cancel."""

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from requests_app.engine import sql
from requests_app.engine.recovery import sweep
from requests_app.models import Request
from tests.conftest import ROOT, ProcfileWeb, WorkerProcess

CLIENT_SIDE = {"DB_SERVER_SIDE_BINDING": "false"}


def database_options(**env: str) -> dict:
    """The psycopg options a process started with `env` uses (less the pool's, which hold a
    callback)."""
    script = (
        "from django.db import connection; "
        "print(repr({k: v for k, v in connection.settings_dict['OPTIONS'].items() if k != 'pool'}))"
    )
    output = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return ast.literal_eval(output.strip().splitlines()[-1])


def test_the_setting_turns_server_side_binding_off():
    with ThreadPoolExecutor(max_workers=1) as other:  # two processes started side by side
        client_side = other.submit(database_options, **CLIENT_SIDE)
        assert database_options()["server_side_binding"] is True
        options = client_side.result()
    assert "server_side_binding" not in options
    assert options["prepare_threshold"] is None


@pytest.mark.timeout(180)
def test_the_engine_runs_with_client_side_binding(tenant, worker, tmp_path):
    # Only the client-side worker may run this test's requests. The suite's worker is
    # killed, not stopped: a stop would wait out attempts an earlier test left in flight.
    worker.kill()
    web = ProcfileWeb(tmp_path / "web.log", **CLIENT_SIDE).start()
    client_side_worker = WorkerProcess(extra_env=CLIENT_SIDE)
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    def send(model: str, **headers) -> httpx.Response:
        return httpx.post(
            f"{web.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={**auth, **headers},
            timeout=60,
        )

    try:
        queued = send("gpt-test", Prefer="respond-async").json()["id"]
        canceled = httpx.post(f"{web.url}/v1/requests/{queued}/cancel", headers=auth)
        client_side_worker.start()
        retried = send("script:503,200")
        fatal = send("script:400")
    finally:
        client_side_worker.stop()
        web.stop()
        worker.start()

    assert canceled.json()["status"] == "canceled"
    assert retried.status_code == 200
    assert retried.headers["ReqRun-Attempts"] == "2"
    assert fatal.status_code == 400
    sweep()
    statuses = sorted(Request.objects.values_list("status", flat=True))
    assert statuses == ["canceled", "failed", "succeeded"]
    assert sql.pending(tenant.account.pk) == 0
