"""Every fault ends honestly: a recorded outcome, never a spliced stream, a stranded request
or a replay that hides how the request ended."""

import json
import socket
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from core import encryption
from projects.models import Upstream
from projects.suspension import SUSPENSION_CANCEL_AFTER_DAYS
from requests_app.engine import sql, upstream
from requests_app.engine.recovery import sweep
from requests_app.engine.redis_client import client as redis_client
from requests_app.engine.streams import StreamPublisher, announce_final, stream_key
from requests_app.models import Attempt, Request
from tests.conftest import WorkerProcess, wait_until
from tests.requests_app.conftest import in_one_rate_limit_window

CHAT = [{"role": "user", "content": "faults"}]


def terminal(public_id: str | None = None, *, sweeping: bool = False) -> Request | None:
    if sweeping:
        sweep()
    requests = Request.objects.prefetch_related("attempts")
    request = requests.get(public_id=public_id) if public_id else requests.first()
    return request if request and request.is_terminal else None


def headers_for(tenant, **extra) -> dict:
    return {"Authorization": f"Bearer {tenant.raw_key}", **extra}


def send_again(live_api, tenant, body: dict, *, key: str) -> httpx.Response:
    """The same chat call, with the same Idempotency-Key: a replay or an attach."""
    return httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json=body,
        headers=headers_for(tenant, **{"Idempotency-Key": key}),
        timeout=30,
    )


def accept_async(live_api, tenant, model: str = "gpt-test", **headers) -> str:
    """Send a call in async mode; its request id."""
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": model, "messages": CHAT},
        headers=headers_for(tenant, Prefer="respond-async", **headers),
    )
    assert response.status_code == 202
    return response.json()["id"]


class StreamReader(threading.Thread):
    """A streaming caller in a thread: everything it received, and whether it left early."""

    def __init__(self, live_api, tenant, body: dict, *, key: str | None = None, leave_after=None):
        super().__init__(daemon=True)
        self.url = f"{live_api.url}/v1/chat/completions"
        self.headers = headers_for(tenant, **({"Idempotency-Key": key} if key else {}))
        self.body = body
        self.leave_after = leave_after
        self.received = b""
        self.status_code = None
        self.first_chunk = threading.Event()

    def run(self):
        with httpx.stream(
            "POST", self.url, json=self.body, headers=self.headers, timeout=90
        ) as response:
            self.status_code = response.status_code
            for chunk in response.iter_raw():
                self.received += chunk
                self.first_chunk.set()
                if self.leave_after and self.received.count(b"data:") >= self.leave_after:
                    return  # the caller hangs up mid-stream
        self.first_chunk.set()


def test_a_worker_lost_after_the_first_byte_ends_the_stream_with_an_error_never_a_splice(
    tenant, live_api, worker, fake_upstream
):
    tenant.project.attempt_timeout_seconds = 3  # lease: 3 s + 1 s grace in the test worker
    tenant.project.save()
    reader = StreamReader(
        live_api, tenant, {"model": "script:stall2,200", "messages": CHAT, "stream": True}
    )
    reader.start()
    assert reader.first_chunk.wait(30), "no bytes reached the client"
    request = wait_until(lambda: Request.objects.filter(first_byte_at__isnull=False).first())

    worker.kill()  # mid-stream, after the client has the first bytes
    worker.start()
    request = wait_until(
        lambda: terminal(request.public_id, sweeping=True),
        timeout=60,
        message="the request never ended after its worker died",
    )
    reader.join(60)

    assert request.status == "failed"
    assert request.partial is True
    assert [(a.outcome, a.error_code) for a in request.attempts.all()] == [
        ("connection_error", "worker_lost")
    ]
    assert b"event: error" in reader.received
    assert b"[DONE]" not in reader.received
    assert fake_upstream.count("/v1/chat/completions") == 1  # never a second attempt


def test_a_stream_whose_caller_has_the_end_gets_nothing_after_it(tenant, live_api, worker):
    # The upstream's whole answer relayed, and then the attempt failed (make chaos saw it
    # around a Redis kill): the request ends failed and partial, but the caller already
    # has the whole answer, and nothing may follow [DONE] in an OpenAI stream.
    worker.stop()  # the test plays the worker
    try:
        reader = StreamReader(
            live_api, tenant, {"model": "gpt-test", "messages": CHAT, "stream": True}
        )
        reader.start()
        request = wait_until(lambda: Request.objects.filter(stream=True).first())
        now = timezone.now()
        Request.objects.filter(pk=request.pk).update(
            status="running", attempt_count=1, started_at=now, first_byte_at=now, lease_until=now
        )
        Attempt.objects.create(request=request, number=1, upstream="primary", started_at=now)
        publisher = StreamPublisher(request.public_id, 1)
        publisher.start(200, {"content-type": "text/event-stream"})
        events = b'data: {"id":"c1","choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
        publisher.chunk(events)
        assert reader.first_chunk.wait(30), "no bytes reached the client"

        error = {"message": "lost", "type": "upstream_error", "param": None, "code": "worker_lost"}
        outcome = {"outcome": "connection_error", "error_code": "worker_lost"}
        assert sql.conclude(
            request_id=request.pk,
            number=1,
            now=timezone.now(),
            attempt=outcome,
            status="failed",
            ends=True,
            error=error,
            partial=True,
        )
        announce_final(request.public_id)
        reader.join(30)
    finally:
        worker.start()

    assert reader.received == events
    assert b"event: error" not in reader.received


def test_an_attempt_that_fails_after_relaying_the_whole_answer_is_recorded_as_delivered(
    tenant, live_api, fake_upstream
):
    # The upstream sends its whole answer, [DONE] included, then holds the connection open
    # until the attempt times out: the worker's own attempt fails after its callers have
    # the complete answer. It is recorded as the sweeper records a worker lost at that
    # point: a success with what was relayed, not a failed, partial request.
    tenant.project.attempt_timeout_seconds = 1
    tenant.project.save()
    body = {
        "model": "script:stall99",
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reader = StreamReader(live_api, tenant, body)
    reader.run()

    request = wait_until(lambda: terminal(), message="the request never ended")
    assert reader.received.rstrip().endswith(b"data: [DONE]")
    assert (request.status, request.partial, request.error) == ("succeeded", False, None)
    assert [(a.outcome, a.error_code) for a in request.attempts.all()] == [("success", None)]
    assert request.usage["total_tokens"] > 0
    assert encryption.decrypt(request.response_body) == reader.received
    assert fake_upstream.count("/v1/chat/completions") == 1


@pytest.mark.timeout(90)
def test_a_reader_left_behind_by_its_stream_in_redis_still_gets_the_whole_answer(
    tenant, live_api, fake_upstream
):
    # Redis keeps a stream a minute past its end; a caller reading more slowly than that
    # (here: reading nothing until the request has ended and its stream is gone) gets
    # the rest from the stored answer, not a truncated stream that just closes.
    event = b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"x"}}]}\n\n'
    piece = event * 60_000  # 5 MB; the sockets between web and caller hold a few
    fake_upstream.answer_raw(
        "big",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        piece,
        piece,
        piece + b"data: [DONE]\n\n",
    )
    slow = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)])
    with (
        httpx.Client(transport=slow, timeout=60) as client,
        client.stream(
            "POST",
            f"{live_api.url}/v1/chat/completions",
            json={"model": "big", "messages": CHAT, "stream": True},
            headers=headers_for(tenant),
        ) as response,
    ):
        request = wait_until(lambda: terminal(), timeout=60, message="the request never ended")
        redis_client().delete(stream_key(request.public_id))  # what its expiry does
        received = response.read()

    assert request.status == "succeeded"
    assert received == piece * 3 + b"data: [DONE]\n\n"


def test_a_negative_retry_hint_on_a_success_is_clamped_not_stranded(sdk, fake_upstream):
    answer = sdk.chat.completions.create(model="script:200ram-1000", messages=CHAT)

    assert answer.choices
    request = wait_until(terminal, message="the request never ended")
    assert request.status == "succeeded"
    assert [(a.outcome, a.retry_after_ms) for a in request.attempts.all()] == [("success", 0)]
    assert fake_upstream.count("/v1/chat/completions") == 1


# The response head every client reads: Node's refuses one over 16 KB, nginx in front of
# ReqRun one over its proxy_buffer_size (4 KB by default).
CLIENT_HEAD_LIMIT = 4 * 1024
# The upstream's headers, and one of them that cannot reach the caller.
UNREADABLE_HEADERS = {
    "a 70 KB x-request-id": ({"x-request-id": "req_" + "sentinel" * 9000}, "x-request-id"),
    "hundreds of x-ratelimit-* headers": (
        {f"x-ratelimit-extra-{n}": "sentinel" * 5 for n in range(400)},
        "x-ratelimit-extra-399",
    ),
    "a control character": ({"x-request-id": "req_sentinel\x01"}, "x-request-id"),
}


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("headers", "dropped"), UNREADABLE_HEADERS.values(), ids=UNREADABLE_HEADERS.keys()
)
def test_an_upstream_header_no_client_could_read_is_dropped_not_passed_on(
    sdk, fake_upstream, worker, headers, dropped, streamed
):
    fake_upstream.script("headed", "200", headers=headers)
    key = f"headed-{uuid.uuid4()}"
    log_start = worker.log_path.stat().st_size

    def call():
        raw = sdk.chat.completions.with_raw_response.create(
            model="headed",
            messages=CHAT,
            stream=streamed,
            extra_headers={"Idempotency-Key": key},
        )
        answer = raw.parse()
        if streamed:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in answer)
        else:
            text = answer.choices[0].message.content
        return raw.headers, text

    answered = call()
    # A streamed caller has the whole answer a moment before the worker has recorded it;
    # a retry in that moment attaches to the running request instead of replaying it.
    wait_until(terminal, message="the request never ended")
    replayed = call()

    for response_headers, text in (answered, replayed):
        assert text == "Hello from fake upstream"
        head = sum(len(name) + len(value) + 4 for name, value in response_headers.raw)
        assert head < CLIENT_HEAD_LIMIT
        assert dropped not in response_headers
        assert response_headers["x-ratelimit-remaining-requests"] == "9999"  # a normal one
    assert replayed[0]["idempotent-replayed"] == "true"
    request = wait_until(terminal, message="the request never ended")
    assert request.status == "succeeded"
    assert dropped not in request.response_headers
    assert fake_upstream.count("/v1/chat/completions") == 1
    with open(worker.log_path, "rb") as log:
        log.seek(log_start)
        lines = [json.loads(line) for line in log if line.startswith(b"{")]
    [warning] = [line for line in lines if line["event"] == "upstream headers dropped"]
    assert warning["request_id"] == request.public_id
    missing = [name for name in headers if name not in request.response_headers]
    assert warning["count"] == len(missing)
    assert warning["headers"].startswith(f"{missing[0]} (")  # names and sizes...
    assert "sentinel" not in json.dumps(lines)  # ...never values


def test_the_answers_type_is_kept_whatever_the_upstream_sent_before_it():
    sent = httpx.Headers(
        [(f"x-ratelimit-extra-{n}", "5" * 40) for n in range(100)]
        + [("content-type", "application/json")]
    )

    kept = upstream.forwarded_headers(sent)

    assert kept["content-type"] == "application/json"
    assert "x-ratelimit-extra-99" not in kept  # the rest still bounded


def test_an_exception_inside_an_attempt_is_a_recorded_outcome_not_a_stranded_request(
    tenant, live_api
):
    # A provider key no HTTP header can carry (stored around the settings form's check)
    # makes the attempt raise inside the worker, before any upstream call.
    Upstream.objects.filter(project=tenant.project).update(
        provider_key_encrypted=encryption.encrypt("sk-test-ключ-1234".encode())
    )
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": CHAT},
        headers=headers_for(tenant, **{"ReqRun-Wait": "30"}),
        timeout=60,
    )

    assert response.status_code == 500  # ours, and said so: not retried, not left running
    assert response.json()["error"]["code"] == "internal_error"
    request = terminal(response.headers["ReqRun-Request-Id"])
    assert request.status == "failed"
    assert [(a.outcome, a.error_code) for a in request.attempts.all()] == [
        ("fatal_error", "internal_error")
    ]
    assert request.attempts.get().finished_at is not None


def test_a_replayed_truncated_stream_ends_with_its_recorded_error(tenant, live_api):
    key = f"replay-{uuid.uuid4()}"
    body = {"model": "script:cut2", "messages": CHAT, "stream": True}
    first = StreamReader(live_api, tenant, body, key=key)
    first.run()
    assert b"event: error" in first.received
    wait_until(lambda: terminal(), message="the request never ended")

    replay = send_again(live_api, tenant, body, key=key)

    assert replay.headers["Idempotent-Replayed"] == "true"
    assert b"event: error" in replay.content
    assert b"[DONE]" not in replay.content
    assert Request.objects.count() == 1
    assert replay.headers["x-request-id"].startswith("req_fake")  # the upstream's, kept
    assert replay.headers["ReqRun-Upstream"] == "primary"


@contextmanager
def outcome_refused(outcome: str):
    """The database refuses to record an attempt as `outcome` (a constraint it keeps), as it
    would a value it cannot take."""
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE requests_app_attempt ADD CONSTRAINT outcome_refused "
            f"CHECK (outcome <> '{outcome}') NOT VALID"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE requests_app_attempt DROP CONSTRAINT outcome_refused")


def stream_refused(live_api, tenant, body: dict, *, key: str, outcome: str):
    """A keyed stream read to its end while the database refuses its attempt's `outcome`:
    what its caller received, and the request as it ended."""
    with outcome_refused(outcome):
        first = StreamReader(live_api, tenant, body, key=key)
        first.run()
        return first, wait_until(lambda: terminal(), message="the request never ended")


def test_a_started_stream_whose_result_the_database_refuses_still_ends_partial(tenant, live_api):
    """The result of a stream cut after its first bytes cannot be written (a constraint
    refuses the attempt's outcome, as a value the database refuses would): the worker records
    its own error instead, but keeps what its callers were sent. The request ends failed and
    partial, and a replay sends the delivered events and an error event, not a 500."""
    key = f"refused-{uuid.uuid4()}"
    body = {"model": "script:cut2", "messages": CHAT, "stream": True}
    first, request = stream_refused(live_api, tenant, body, key=key, outcome="connection_error")

    assert (request.status, request.partial) == ("failed", True)
    # Our fault, said as ours: not the upstream's broken stream.
    assert (request.error["code"], request.error["type"]) == ("internal_error", "server_error")
    assert "upstream" not in request.error["message"].lower()
    delivered = first.received.split(b"event: error")[0]
    assert delivered.count(b"data:") == 2

    replay = send_again(live_api, tenant, body, key=key)

    assert replay.status_code == 200, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content.startswith(delivered)
    assert b"event: error" in replay.content and b"internal_error" in replay.content
    assert b"[DONE]" not in replay.content


def test_a_replay_of_a_whole_stream_whose_success_was_refused_sends_nothing_after_its_end(
    tenant, live_api
):
    # The stream reached its caller whole, [DONE] included, but its success cannot be
    # written: the request is recorded failed as our own error. Its replay says so with an
    # error event, and so leaves out the [DONE] an SSE client would stop reading at.
    key = f"whole-{uuid.uuid4()}"
    body = {"model": "gpt-test", "messages": CHAT, "stream": True}
    first, request = stream_refused(live_api, tenant, body, key=key, outcome="success")

    assert first.received.rstrip().endswith(b"data: [DONE]")  # the live caller's, whole
    assert (request.status, request.error["code"]) == ("failed", "internal_error")
    replay = send_again(live_api, tenant, body, key=key)

    assert replay.headers["Idempotent-Replayed"] == "true"
    assert b"[DONE]" not in replay.content
    delivered, error = replay.content.split(b"event: error")
    assert first.received.startswith(delivered) and delivered.count(b"data:") >= 2
    assert b"internal_error" in error


def test_a_replayed_canceled_request_says_it_was_canceled(tenant, live_api, worker):
    key = f"canceled-{uuid.uuid4()}"
    body = {"model": "gpt-test", "messages": CHAT}
    worker.stop()  # nothing runs it, so it can be canceled while queued
    try:
        public_id = accept_async(live_api, tenant, **{"Idempotency-Key": key})
        canceled = httpx.post(
            f"{live_api.url}/v1/requests/{public_id}/cancel", headers=headers_for(tenant)
        )
        assert canceled.json()["status"] == "canceled"
    finally:
        worker.start()

    replay = send_again(live_api, tenant, body, key=key)

    assert replay.status_code == 409
    assert replay.json()["error"]["code"] == "request_canceled"
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_an_attached_caller_leaving_does_not_cancel_the_original_callers_stream(tenant, live_api):
    key = f"attached-{uuid.uuid4()}"
    body = {"model": "script:slowchunks300", "messages": CHAT, "stream": True}
    original = StreamReader(live_api, tenant, body, key=key)
    original.start()
    assert original.first_chunk.wait(30)
    attached = StreamReader(live_api, tenant, body, key=key, leave_after=1)
    attached.run()  # reads one event, then hangs up
    original.join(60)

    assert original.received.rstrip().endswith(b"data: [DONE]")
    request = wait_until(lambda: terminal(), message="the request never ended")
    assert request.status == "succeeded"
    assert request.partial is False


def test_zero_retention_keeps_no_streamed_answer(tenant, live_api):
    tenant.project.zero_retention = True
    tenant.project.save()
    reader = StreamReader(live_api, tenant, {"model": "gpt-test", "messages": CHAT, "stream": True})
    reader.run()
    assert reader.received.rstrip().endswith(b"data: [DONE]")

    request = wait_until(lambda: terminal(), message="the request never ended")
    assert request.status == "succeeded"
    assert request.response_body is None


def test_zero_retention_forgets_an_answer_once_the_list_has_shown_it(tenant, live_api):
    tenant.project.zero_retention = True
    tenant.project.save()
    public_id = accept_async(live_api, tenant)
    wait_until(lambda: terminal(public_id), message="the request never ended")

    listed = httpx.get(f"{live_api.url}/v1/requests", headers=headers_for(tenant)).json()
    shown = listed["data"][0]["response"]
    again = httpx.get(f"{live_api.url}/v1/requests", headers=headers_for(tenant)).json()

    assert shown["status_code"] == 200
    assert again["data"][0]["response"] is None
    assert Request.objects.get(public_id=public_id).response_body is None


def test_zero_retention_keeps_an_answer_a_head_request_did_not_show(tenant, live_api):
    # HEAD answers with headers only: the answer has reached nobody, so it is still owed.
    tenant.project.zero_retention = True
    tenant.project.save()
    public_id = accept_async(live_api, tenant)
    wait_until(lambda: terminal(public_id), message="the request never ended")

    for path in (f"/v1/requests/{public_id}", "/v1/requests"):
        head = httpx.head(f"{live_api.url}{path}", headers=headers_for(tenant))
        assert head.status_code == 200 and head.content == b""
    shown = httpx.get(f"{live_api.url}/v1/requests/{public_id}", headers=headers_for(tenant))

    assert shown.json()["response"]["status_code"] == 200
    assert Request.objects.get(public_id=public_id).response_body is None  # shown: now gone


def test_zero_retention_forgets_an_answer_once_a_replay_has_delivered_it(tenant, live_api):
    tenant.project.zero_retention = True
    tenant.project.save()
    public_id = accept_async(live_api, tenant, **{"Idempotency-Key": "order-7"})
    wait_until(lambda: terminal(public_id), message="the request never ended")

    def replay() -> httpx.Response:
        return httpx.post(
            f"{live_api.url}/v1/chat/completions",
            json={"model": "gpt-test", "messages": CHAT},
            headers=headers_for(tenant, Prefer="respond-async", **{"Idempotency-Key": "order-7"}),
        )

    delivered = replay()
    assert delivered.status_code == 200 and delivered.json()["choices"]
    assert delivered.headers["idempotent-replayed"] == "true"
    shown = httpx.get(f"{live_api.url}/v1/requests/{public_id}", headers=headers_for(tenant))
    again = replay()

    assert shown.json()["response"] is None
    assert again.status_code == 410
    assert again.json()["error"]["code"] == "response_not_retained"
    assert Request.objects.get(public_id=public_id).response_body is None


def test_zero_retention_forgets_an_answer_once_a_refused_cancel_has_shown_it(tenant, live_api):
    tenant.project.zero_retention = True
    tenant.project.save()
    public_id = accept_async(live_api, tenant)
    wait_until(lambda: terminal(public_id), message="the request never ended")

    refused = httpx.post(
        f"{live_api.url}/v1/requests/{public_id}/cancel", headers=headers_for(tenant)
    )
    shown = httpx.get(f"{live_api.url}/v1/requests/{public_id}", headers=headers_for(tenant))

    assert refused.status_code == 409
    assert refused.json()["response"]["status_code"] == 200  # the object, unchanged
    assert shown.json()["response"] is None
    assert Request.objects.get(public_id=public_id).response_body is None


def test_streamed_bytes_in_redis_are_not_plain_text(tenant, live_api):
    from requests_app.engine.redis_client import client
    from requests_app.engine.streams import stream_key

    reader = StreamReader(live_api, tenant, {"model": "gpt-test", "messages": CHAT, "stream": True})
    reader.run()
    request = wait_until(lambda: terminal(), message="the request never ended")

    entries = client().xrange(stream_key(request.public_id))
    stored = b"".join(value for _, fields in entries for value in fields.values())
    first_event = json.loads(reader.received.split(b"data: ")[1].split(b"\n")[0])

    assert any(fields[b"kind"] == b"chunk" for _, fields in entries)
    assert b"data: " not in stored
    assert first_event["id"].encode() not in stored


def test_a_suspended_accounts_queued_request_is_held_then_resumed_when_lifted(
    tenant, live_api, worker, fake_upstream
):
    from accounts.services import suspend_account, unsuspend_account

    worker.stop()
    public_id = accept_async(live_api, tenant)
    suspend_account(account=tenant.account, reason="Unpaid invoices")
    worker.start()
    wait_until(
        lambda: Request.objects.filter(public_id=public_id, next_attempt_at__isnull=False).exists(),
        timeout=60,
        message="the worker never looked at the held request",
    )
    sweep()

    assert Request.objects.get(public_id=public_id).status == "queued"
    assert fake_upstream.count("/v1/chat/completions") == 0  # not sent while suspended

    unsuspend_account(account=tenant.account)
    Request.objects.filter(public_id=public_id).update(next_attempt_at=timezone.now())
    request = wait_until(
        lambda: terminal(public_id, sweeping=True), timeout=60, message="never resumed"
    )
    assert request.status == "succeeded"
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_a_request_held_past_the_suspension_period_is_canceled_with_its_reason(
    tenant, live_api, worker, fake_upstream
):
    from accounts.services import suspend_account

    worker.stop()
    public_id = accept_async(live_api, tenant)
    suspend_account(account=tenant.account, reason="Abuse report")
    type(tenant.account).objects.filter(pk=tenant.account.pk).update(
        suspended_at=timezone.now() - timedelta(days=SUSPENSION_CANCEL_AFTER_DAYS, hours=1)
    )
    worker.start()

    request = wait_until(
        lambda: terminal(public_id, sweeping=True), timeout=60, message="never canceled"
    )
    assert request.status == "canceled"
    assert request.error["code"] == "account_suspended"
    assert request.attempts.count() == 0
    assert fake_upstream.count("/v1/chat/completions") == 0


def test_a_keyed_retry_at_the_rate_limit_is_replayed_not_refused(tenant, live_api):
    tenant.override(requests_per_minute=1)
    in_one_rate_limit_window()
    call = {
        "url": f"{live_api.url}/v1/chat/completions",
        "json": {"model": "gpt-test", "messages": CHAT},
        "headers": headers_for(tenant, **{"Idempotency-Key": f"limit-{uuid.uuid4()}"}),
        "timeout": 30,
    }
    first = httpx.post(**call)
    retry = httpx.post(**call)  # the client's own retry, over the per-minute limit
    other = httpx.post(**{**call, "headers": headers_for(tenant)})

    assert first.status_code == 200
    assert retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert other.status_code == 429  # a new call is still limited
    assert other.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_concurrency_slot_is_freed_only_by_the_attempt_that_took_it(db):
    from requests_app.engine import concurrency

    account_id, request_pk = 10_000_001, 42
    concurrency.release(account_id=account_id, token="")  # nothing to free
    mine = concurrency.slot_token(request_pk)
    late_duplicate = concurrency.slot_token(request_pk)  # a second task for the same request

    assert concurrency.acquire(account_id=account_id, token=mine, limit=1, lease_seconds=30)
    assert not concurrency.acquire(
        account_id=account_id, token=late_duplicate, limit=1, lease_seconds=30
    )
    concurrency.release(account_id=account_id, token=late_duplicate)
    assert concurrency.in_use(account_id) == 1  # still held by the attempt that took it
    concurrency.release(account_id=account_id, token=mine)
    assert concurrency.in_use(account_id) == 0


def test_the_pending_count_follows_every_way_a_request_ends(tenant, live_api, worker):
    def send(model: str) -> str:
        return accept_async(live_api, tenant, model)

    worker.stop()
    canceled = send("gpt-test")
    httpx.post(f"{live_api.url}/v1/requests/{canceled}/cancel", headers=headers_for(tenant))
    expired = send("gpt-test")
    Request.objects.filter(public_id=expired).update(deadline_at=timezone.now())
    worker.start()
    ids = [canceled, expired, send("gpt-test"), send("script:400"), send("script:503,200")]
    ended = wait_until(
        lambda: all(terminal(public_id, sweeping=True) for public_id in ids) and ids,
        timeout=60,
        message="not every request ended",
    )

    statuses = {Request.objects.get(public_id=public_id).status for public_id in ended}
    assert statuses == {"canceled", "expired", "succeeded", "failed"}
    assert sql.pending(tenant.account.pk) == 0


def test_a_stream_longer_than_its_lease_keeps_it_and_is_never_recovered(tenant, live_api):
    # Lease: 3 s timeout + 1 s grace in the test worker; the stream takes about 25 s.
    tenant.project.attempt_timeout_seconds = 3
    tenant.project.save()
    reader = StreamReader(
        live_api, tenant, {"model": "script:slowchunks2500", "messages": CHAT, "stream": True}
    )
    reader.start()
    while reader.is_alive():
        sweep()  # a sweeper that would recover any lease that ran out
        reader.join(0.5)

    assert reader.received.rstrip().endswith(b"data: [DONE]")
    request = wait_until(lambda: terminal(), message="the request never ended")
    assert request.status == "succeeded"
    assert [a.outcome for a in request.attempts.all()] == ["success"]


@pytest.mark.timeout(120)
def test_a_private_upstream_is_refused_alike_for_streams_and_plain_calls(tenant, live_api, worker):
    worker.stop()  # the suite's worker allows private upstreams; production's does not
    guarded = WorkerProcess(extra_env={"REQRUN_ALLOW_PRIVATE_UPSTREAMS": "false"}).start()
    try:
        plain = httpx.post(
            f"{live_api.url}/v1/chat/completions",
            json={"model": "gpt-test", "messages": CHAT},
            headers=headers_for(tenant),
            timeout=60,
        )
        streamed = StreamReader(
            live_api, tenant, {"model": "gpt-test", "messages": CHAT, "stream": True}
        )
        streamed.run()
    finally:
        guarded.stop()
        worker.start()

    assert plain.status_code == 502
    assert plain.json()["error"]["code"] == "upstream_not_allowed"
    assert streamed.status_code == 502
    assert json.loads(streamed.received)["error"]["code"] == "upstream_not_allowed"
    outcomes = {(a.outcome, a.error_code) for a in Attempt.objects.all()}
    assert outcomes == {("fatal_error", "upstream_not_allowed")}
