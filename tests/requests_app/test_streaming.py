"""Streaming through ReqRun with the official SDK: chunks as they come, never a fake success."""

import asyncio
import json
import socket

import httpx
import openai
import pytest

from requests_app.models import Request
from tests.conftest import wait_until

CHAT = [{"role": "user", "content": "stream please"}]


def only_request() -> Request:
    """The one request, once terminal: the client can see the stream end before the worker
    has written the outcome."""
    return wait_until(
        lambda: (
            Request.objects.prefetch_related("attempts")
            .filter(status__in=["succeeded", "failed", "canceled", "expired"])
            .first()
        ),
        timeout=30,
        message="the request never reached a terminal state",
    )


def test_a_streamed_chat_answer_arrives_in_chunks_and_ends_normally(sdk):
    stream = sdk.chat.completions.create(
        model="gpt-test", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(contents) >= 3
    request = only_request()
    assert request.status == "succeeded"
    assert request.stream is True
    assert request.partial is False
    assert request.usage["total_tokens"] == chunks[-1].usage.total_tokens
    assert request.first_byte_at is not None


def test_the_async_client_streams_too(tenant, live_api):
    async def consume():
        client = openai.AsyncOpenAI(
            base_url=f"{live_api.url}/v1", api_key=tenant.raw_key, max_retries=0
        )
        stream = await client.chat.completions.create(model="gpt-test", messages=CHAT, stream=True)
        return [chunk async for chunk in stream]

    assert len(asyncio.run(consume())) >= 3


def test_a_503_before_the_first_byte_is_retried_invisibly(sdk):
    chunks = list(sdk.chat.completions.create(model="script:503,200", messages=CHAT, stream=True))
    assert chunks
    assert [a.outcome for a in only_request().attempts.all()] == ["retryable_error", "success"]


def test_a_stream_cut_midway_raises_in_the_client_and_is_recorded_partial(sdk, fake_upstream):
    received = []
    with pytest.raises(openai.APIError):
        for chunk in sdk.chat.completions.create(model="script:cut2", messages=CHAT, stream=True):
            received.append(chunk)

    assert len(received) == 2
    request = only_request()
    assert request.status == "failed"
    assert request.partial is True
    assert b"data:" in bytes(request.response_body or b"") or request.response_body
    assert fake_upstream.count("/v1/chat/completions") == 1  # no retry after the first byte


def test_garbage_instead_of_sse_is_a_clear_error(sdk, tenant):
    tenant.project.max_attempts = 1
    tenant.project.save()
    with pytest.raises(openai.APIStatusError) as raised:
        list(sdk.chat.completions.create(model="script:garbage", messages=CHAT, stream=True))
    assert raised.value.status_code == 502
    assert only_request().status == "failed"


def test_a_stalled_stream_hits_the_inter_chunk_timeout(sdk, tenant):
    tenant.project.attempt_timeout_seconds = 1
    tenant.project.save()
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model="script:stall2", messages=CHAT, stream=True))
    request = only_request()
    assert request.status == "failed"
    assert request.partial is True


def test_responses_api_stream_reaches_response_completed(sdk):
    events = list(sdk.responses.create(model="gpt-test", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert only_request().usage["total_tokens"] == events[-1].response.usage.total_tokens


def test_a_replayed_stream_streams_the_stored_result_again(tenant, live_api, fake_upstream):
    def call():
        return httpx.post(
            f"{live_api.url}/v1/chat/completions",
            json={"model": "gpt-test", "messages": CHAT, "stream": True},
            headers={"Authorization": f"Bearer {tenant.raw_key}", "Idempotency-Key": "s1"},
            timeout=30,
        )

    first = call()
    # The caller has the stream's end a moment before the worker has recorded it: a call
    # in that moment attaches to the running request rather than replaying it.
    only_request()
    second = call()

    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.content == first.content
    assert b"data: [DONE]" in second.content
    assert fake_upstream.count("/v1/chat/completions") == 1
    # The upstream's own headers describe the provider key; a replay keeps them too.
    assert second.headers["x-request-id"] == first.headers["x-request-id"]
    remaining = "x-ratelimit-remaining-requests"
    assert second.headers[remaining] == first.headers[remaining]
    assert second.headers["content-type"] == first.headers["content-type"]


def test_a_stream_not_started_within_the_wait_budget_answers_202(tenant, live_api):
    # The upstream starts after 3.5 s; a 1 s budget must not hold the caller until then.
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "sleep-3500", "messages": CHAT, "stream": True},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "ReqRun-Wait": "1"},
        timeout=30,
    )

    assert response.status_code == 202, response.text[:300]
    assert wait_until(lambda: only_request().status == "succeeded", timeout=30)


def test_stream_with_async_mode_is_refused(tenant, live_api):
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": CHAT, "stream": True},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "stream_with_async"
    assert not Request.objects.exists()


def test_a_client_that_disconnects_cancels_the_upstream_call(tenant, live_api):
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{live_api.url}/v1/chat/completions",
            json={"model": "script:stall1", "messages": CHAT, "stream": True},
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
        ) as response,
    ):
        next(response.iter_raw())  # the first chunk, then hang up

    request = wait_until(
        lambda: Request.objects.filter(status="canceled").first(),
        timeout=30,
        message="the request was not canceled after the client left",
    )
    assert request.partial is True


def test_a_keyless_stream_left_before_the_upstream_answers_stops_the_upstream_call(
    tenant, live_api, fake_upstream
):
    # The upstream has not even sent its headers (a model still thinking): the call is
    # stopped within moments, not held, slot and worker thread with it, to its timeout.
    tenant.project.attempt_timeout_seconds = 30
    tenant.project.save()
    body = json.dumps({"model": "script:hang", "messages": CHAT, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", live_api.port)) as caller:
        caller.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: reqrun\r\n"
            + f"Authorization: Bearer {tenant.raw_key}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(lambda: fake_upstream.count("/v1/chat/completions") == 1)
    # The caller has hung up; the upstream is still thinking.

    request = wait_until(
        lambda: Request.objects.filter(finished_at__isnull=False).first(),
        timeout=10,
        message="the upstream call went on after its only caller left",
    )
    assert (request.status, request.partial) == ("canceled", False)
    attempt = request.attempts.get()
    assert (attempt.outcome, attempt.error_code) == ("fatal_error", "client_disconnected")
    assert attempt.latency_ms < 5000


def test_a_keyed_stream_left_before_its_first_byte_is_kept_for_the_retry(
    tenant, live_api, fake_upstream
):
    # An SDK whose timeout is shorter than the upstream's first byte hangs up and retries
    # with the same key; the retry attaches to the request instead of finding it canceled.
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "Idempotency-Key": "slow-start"}
    body = {"model": "sleep-3000", "messages": CHAT, "stream": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live_api.url}/v1/chat/completions", json=body, headers=headers, timeout=1)

    retry = httpx.post(
        f"{live_api.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    )

    assert retry.status_code == 200, retry.text[:300]
    assert retry.content.rstrip().endswith(b"data: [DONE]")
    assert wait_until(lambda: only_request().status == "succeeded")
    assert fake_upstream.count("/v1/chat/completions") == 1
