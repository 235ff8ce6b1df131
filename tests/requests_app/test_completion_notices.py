"""Completion notices carry small final answers, so a waiting caller needs no database read."""

import asyncio
import json
import threading
import time

import httpx
from django.conf import settings

from core import encryption
from requests_app.api.responses import final_response, wait_until_finished
from requests_app.engine.notifications import (
    ANSWER_IN_NOTICE_MAX_BYTES,
    CHANNEL,
    CompletionHub,
    answer_of,
    hub,
    publish_finished,
)
from requests_app.engine.redis_client import client
from requests_app.models import Request, Status
from tests.fake_upstream.payloads import REPLY
from tests.tcp_proxy import FreezingProxy

CHAT = [{"role": "user", "content": "Say hello"}]


class Notices:
    """Everything published on the completion channel while the block runs."""

    def __enter__(self):
        self.pubsub = client().pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(CHANNEL)
        return self

    def __exit__(self, *exc_info):
        self.pubsub.close()

    def message_for(self, public_id: str, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.5)
            if message and message["data"].split(b"\n", 1)[0] == public_id.encode():
                return message["data"]
        raise AssertionError(f"no completion notice for {public_id}")


def test_the_answer_in_the_notice_is_the_stored_answer_and_stays_encrypted(tenant, live_api):
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "Idempotency-Key": "notice-1"}
    body = {"model": "gpt-test", "messages": CHAT}
    with Notices() as notices:
        waited = httpx.post(f"{live_api.url}/v1/chat/completions", headers=headers, json=body)
        message = notices.message_for(waited.headers["ReqRun-Request-Id"])

    assert waited.status_code == 200
    assert REPLY.encode() not in message  # the completion travels encrypted, as stored
    answer = json.loads(message.split(b"\n", 1)[1])
    assert answer["status"] == Status.SUCCEEDED
    assert encryption.decrypt(answer["response_body"].encode()) == waited.content

    # A replay is built from the database row: the waiter got exactly the same answer.
    replayed = httpx.post(f"{live_api.url}/v1/chat/completions", headers=headers, json=body)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.content == waited.content
    for header in ("ReqRun-Attempts", "x-request-id", "content-type"):
        assert replayed.headers[header] == waited.headers[header]


def test_a_large_answer_is_not_put_in_the_notice_and_is_read_from_the_database(tenant, live_api):
    with Notices() as notices:
        response = httpx.post(
            f"{live_api.url}/v1/embeddings",
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
            json={"model": "text-embedding-3-small", "input": "hi", "dimensions": 20000},
            timeout=30,
        )
        message = notices.message_for(response.headers["ReqRun-Request-Id"])

    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 20000
    assert len(response.content) > ANSWER_IN_NOTICE_MAX_BYTES
    assert message == response.headers["ReqRun-Request-Id"].encode()  # the id alone


def test_a_waiter_with_its_record_is_answered_from_the_notice_alone():
    # The record was never saved: had the waiter read the database, it would have failed.
    stored = Request(
        public_id="req_notice_only",
        status=Status.SUCCEEDED,
        attempt_count=2,
        response_status_code=200,
        response_headers={"x-request-id": "up-1"},
        response_body=encryption.encrypt(b'{"ok": true}'),
    )
    answer = answer_of(stored)
    waiting = Request(public_id="req_notice_only", status=Status.QUEUED)

    async def wait():
        completion_hub = await hub()
        notice = completion_hub.register(waiting.public_id)
        publisher = threading.Timer(0.1, publish_finished, [waiting.public_id, answer])
        publisher.start()
        try:
            return await wait_until_finished(
                None, waiting.public_id, 10, notice=notice, record=waiting
            )
        finally:
            completion_hub.unregister(waiting.public_id, notice)

    record = asyncio.run(wait())
    assert record is waiting
    response = final_response(record)
    assert (response.status_code, response.content) == (200, b'{"ok": true}')
    assert response["ReqRun-Attempts"] == "2"
    assert response["x-request-id"] == "up-1"


def test_answers_over_the_limit_are_left_out():
    big = Request(
        public_id="req_big",
        status=Status.SUCCEEDED,
        response_body=b"x" * (ANSWER_IN_NOTICE_MAX_BYTES + 1),
    )
    assert answer_of(big) is None
    failed = Request(public_id="req_failed", status=Status.FAILED, error={"code": "timeout"})
    assert answer_of(failed)["response_body"] is None
    assert answer_of(failed)["error"] == {"code": "timeout"}


def test_a_half_open_subscriber_is_noticed_and_its_waiters_reread_the_database():
    redis_port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = FreezingProxy(redis_port, marker=b"SUBSCRIBE")

    async def scenario():
        completion_hub = CompletionHub(url=f"redis://127.0.0.1:{proxy.port}/0")
        await completion_hub.start()
        healthy_before = completion_hub.healthy
        proxy.frozen.set()  # Redis goes silent without closing the connection
        waiter = completion_hub.register("req_waiting_for_a_notice")
        budget = CompletionHub.HEALTH_CHECK_SECONDS + CompletionHub.PONG_TIMEOUT_SECONDS + 5
        try:
            woken_with = await asyncio.wait_for(waiter, timeout=budget)
        finally:
            completion_hub.task.cancel()
        return healthy_before, woken_with

    try:
        healthy_before, woken_with = asyncio.run(scenario())
    finally:
        proxy.close()

    assert healthy_before is True
    assert woken_with is None  # woken without an answer: re-read the database
