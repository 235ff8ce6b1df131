"""A rolling restart under load: a second web comes up and the first gets SIGTERM, then each
worker in turn. Every accepted request ends once, every caller gets its answer or a 202
(then the answer by polling), and no answer is a 5xx of ours."""

import threading
import time
import uuid
from collections import Counter

import httpx
import pytest

from requests_app.models import Attempt, Request
from tests.conftest import BeatProcess, ProcfileWeb, WorkerProcess

MODELS = ["sleep-1500", "script:503,200", "gpt-test"]


class Caller(threading.Thread):
    """A client that keeps its Idempotency-Key across retries, as the OpenAI SDK does."""

    def __init__(self, current, key: str, model: str):
        super().__init__(daemon=True)
        self.current, self.key, self.model = current, key, model
        self.answers: list[int] = []  # every status it received, in order
        self.request_id: str | None = None
        self.final: dict | None = None

    def run(self):
        body = {"model": self.model, "messages": [{"role": "user", "content": self.key}]}
        headers = {**self.current.auth, "Idempotency-Key": self.key}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.final is None:
            try:
                if self.request_id is None:
                    response = httpx.post(
                        f"{self.current.url}/v1/chat/completions",
                        json=body,
                        headers=headers,
                        timeout=60,
                    )
                else:
                    response = httpx.get(
                        f"{self.current.url}/v1/requests/{self.request_id}?wait=20",
                        headers=headers,
                        timeout=60,
                    )
            except httpx.TransportError:
                time.sleep(0.2)  # the web it used went away: retry on the current one
                continue
            self.answers.append(response.status_code)
            if response.status_code == 202:
                self.request_id = response.json()["id"]
            elif response.status_code == 200 and self.request_id is not None:
                if response.json()["status"] in ("succeeded", "failed", "canceled", "expired"):
                    self.final = response.json()
            else:
                self.request_id = response.headers.get("ReqRun-Request-Id")
                self.final = {"status_code": response.status_code}


class Current:
    """Which web the callers use now, as a load balancer would route them."""

    def __init__(self, web: ProcfileWeb, raw_key: str):
        self.url = web.url
        self.auth = {"Authorization": f"Bearer {raw_key}"}


@pytest.mark.timeout(300)
def test_a_rolling_restart_under_load_loses_and_repeats_nothing(
    tenant, worker, fake_upstream, tmp_path
):
    # Killed, not stopped: a stop would wait out attempts an earlier test left in flight,
    # and only the restarts below are under test.
    worker.kill()
    old_web = ProcfileWeb(tmp_path / "web-1.log").start()
    current = Current(old_web, tenant.raw_key)
    workers = [WorkerProcess(concurrency=8).start() for _ in range(2)]
    # Beat sweeps as on any deploy: a message a stopping worker took but did not run is
    # published again, and its caller must not wait for the test's end to see that.
    beat = BeatProcess().start()
    callers: list[Caller] = []
    new_web = None
    try:
        for n in range(60):
            caller = Caller(current, f"roll-{uuid.uuid4()}", MODELS[n % len(MODELS)])
            caller.start()
            callers.append(caller)
            time.sleep(0.1)
            if n == 20:  # web: the new one first, then SIGTERM to the old
                new_web = ProcfileWeb(tmp_path / "web-2.log").start()
                current.url = new_web.url
                old_web.terminate()
            if n in (30, 45):  # workers, one at a time: the new one first
                workers.append(WorkerProcess(concurrency=8).start())
                workers.pop(0).stop()  # SIGTERM, then it finishes what it runs
        for caller in callers:
            caller.join(120)
    finally:
        for process in [old_web, new_web, beat, *workers]:
            if process is not None:
                process.stop()
        worker.start()

    answered = [caller.answers for caller in callers]
    assert all(caller.final is not None for caller in callers), answered
    assert not [codes for codes in answered if any(code >= 500 for code in codes)]
    assert {code for codes in answered for code in codes} <= {200, 202}
    requests = Request.objects.all()
    assert requests.count() == len(callers)  # one request per key, whatever the retries
    assert set(requests.values_list("status", flat=True)) == {"succeeded"}
    # A graceful restart loses no attempt: none was cut off and run again.
    assert not Attempt.objects.filter(error_code="worker_lost").exists()
    answered_upstream = Counter(
        recorded.body["messages"][0]["content"]
        for recorded in fake_upstream.requests
        if recorded.step in ("200", "sleep-1500")
    )
    assert answered_upstream == Counter(caller.key for caller in callers)  # each once
