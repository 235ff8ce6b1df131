"""A web process told to stop (a deploy): waiting callers get their 202, relayed streams end
with an error event naming the request, the process exits soon, and the requests go on."""

import threading
import time

import httpx
import pytest

from requests_app.engine.recovery import sweep
from requests_app.models import Request
from tests.conftest import ProcfileWeb, wait_until

CHAT = [{"role": "user", "content": "deploy"}]


class Caller(threading.Thread):
    """One caller of the web process, in a thread: its status, headers and body."""

    def __init__(self, url: str, key: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.key, self.body = url, key, body
        self.status_code = None
        self.headers: dict = {}
        self.received = b""
        self.started = threading.Event()

    def run(self):
        with httpx.stream(
            "POST",
            f"{self.url}/v1/chat/completions",
            json=self.body,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=90,
        ) as response:
            self.status_code, self.headers = response.status_code, dict(response.headers)
            for chunk in response.iter_raw():
                self.received += chunk
                self.started.set()
        self.started.set()


@pytest.mark.timeout(180)
def test_sigterm_answers_waiters_with_202_and_ends_streams_naming_the_request(
    tenant, worker, tmp_path
):
    tenant.project.attempt_timeout_seconds = 60  # the 8 s call succeeds in one attempt
    tenant.project.save()
    web = ProcfileWeb(tmp_path / "web.log").start()
    try:
        waiting = Caller(web.url, tenant.raw_key, {"model": "sleep-8000", "messages": CHAT})
        streaming = Caller(
            web.url,
            tenant.raw_key,
            {"model": "script:slowchunks2000", "messages": CHAT, "stream": True},
        )
        waiting.start()
        streaming.start()
        assert streaming.started.wait(30), "the stream never started"

        def plain_running():
            # Answered before it ran: refused, which the caller's answer says.
            assert waiting.is_alive(), (waiting.status_code, waiting.received[-300:])
            # As beat does: a publish the broker lost is sent again (10 s after the accept).
            sweep()
            return Request.objects.filter(stream=False, status="running").exists()

        wait_until(plain_running, interval=0.1, message="the waiting caller's request never ran")

        stopped_at = time.monotonic()
        web.terminate()
        waiting.join(30)
        streaming.join(30)
        web.process.wait(timeout=30)
        took = time.monotonic() - stopped_at
        # The caller had its 202 and the process was gone while the call still ran.
        running_after_exit = Request.objects.get(stream=False).status
    finally:
        web.stop()

    plain = Request.objects.get(stream=False)
    streamed = Request.objects.get(stream=True)
    assert waiting.status_code == 202
    assert waiting.headers["location"] == f"/v1/requests/{plain.public_id}"
    assert b"event: error" in streaming.received
    assert streamed.public_id.encode() in streaming.received.split(b"event: error")[-1]
    assert b"[DONE]" not in streaming.received
    assert running_after_exit == "running"  # the web did not wait for the call's end
    assert took < 15

    # The restart cost the requests nothing: they finish in the worker.
    def succeeded():
        sweep()
        return Request.objects.filter(pk=plain.pk, status="succeeded").first()

    plain = wait_until(succeeded, timeout=60, message="the waiting request never finished")
    assert plain.attempts.count() == 1
