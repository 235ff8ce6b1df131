"""A stored value whose encryption key has left REQRUN_ENCRYPTION_KEYS (dropped before
`rotate_encryption_keys` ran, or an old backup restored): said so, never a 500 or a crash."""

import json
import logging
from datetime import timedelta

import httpx
import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from core import encryption
from projects.models import Upstream
from requests_app.engine.accept import body_digest
from requests_app.engine.executor import execute_request
from requests_app.models import Request
from tests.conftest import wait_until
from tests.factories import RequestFactory

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def under_a_dropped_key(plaintext: bytes) -> bytes:
    """`plaintext` encrypted with a key the test settings' ring does not hold."""
    return Fernet(Fernet.generate_key()).encrypt(plaintext)


def unreadable_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "stored value cannot be decrypted"]


def finished_with_unreadable_response(tenant, **fields):
    return RequestFactory(
        project=tenant.project,
        status="succeeded",
        finished_at=timezone.now(),
        response_status_code=200,
        response_body=under_a_dropped_key(b'{"answer": "sealed"}'),
        response_expires_at=timezone.now() + timedelta(hours=1),
        **fields,
    )


def test_the_request_object_leaves_out_a_response_it_cannot_read(tenant, live_api, caplog):
    record = finished_with_unreadable_response(tenant)
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    with caplog.at_level(logging.WARNING):
        one = httpx.get(f"{live_api.url}/v1/requests/{record.public_id}", headers=auth)
        listed = httpx.get(f"{live_api.url}/v1/requests", headers=auth)

    assert one.status_code == 200, one.text
    assert one.json()["status"] == "succeeded"
    assert one.json()["response"] is None  # as an expired one
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"][0]["response"] is None
    warnings = unreadable_warnings(caplog)
    assert warnings and {w.request_id for w in warnings} == {record.public_id}
    assert "gAAAAA" not in caplog.text


def test_a_replay_of_a_response_it_cannot_read_says_why_it_is_gone(tenant, live_api, caplog):
    body = json.dumps(CHAT).encode()
    record = finished_with_unreadable_response(
        tenant,
        idempotency_key="order-1",
        idempotency_slot="order-1",
        body_sha256=body_digest(body),
    )

    with caplog.at_level(logging.WARNING):
        replay = httpx.post(
            f"{live_api.url}/v1/chat/completions",
            content=body,
            headers={
                "Authorization": f"Bearer {tenant.raw_key}",
                "Content-Type": "application/json",
                "Idempotency-Key": "order-1",
            },
        )

    assert replay.status_code == 410, replay.text
    error = replay.json()["error"]
    assert error["code"] == "response_not_retained"
    assert "encryption keys" in error["message"]
    assert replay.headers["reqrun-request-id"] == record.public_id
    assert [w.request_id for w in unreadable_warnings(caplog)] == [record.public_id]


def run_in_this_process(tenant, request_body: bytes):
    record = RequestFactory(project=tenant.project, request_body=request_body, max_attempts=3)
    execute_request(record.pk)
    record.refresh_from_db()
    return record


@pytest.mark.parametrize("unreadable", ["request body", "provider key"])
def test_an_attempt_that_cannot_read_what_it_sends_fails_saying_what_to_do(
    tenant, fake_upstream, caplog, unreadable
):
    request_body = encryption.encrypt(json.dumps(CHAT).encode())
    if unreadable == "provider key":
        Upstream.objects.filter(project=tenant.project).update(
            provider_key_encrypted=under_a_dropped_key(b"sk-test-provider-key-1234")
        )
    else:
        request_body = under_a_dropped_key(json.dumps(CHAT).encode())

    with caplog.at_level(logging.WARNING):
        record = run_in_this_process(tenant, request_body)

    assert record.status == "failed"
    assert record.request_body is None
    assert [a.error_code for a in record.attempts.all()] == ["encryption_key_missing"]
    assert record.error["code"] == "encryption_key_missing"
    assert unreadable in record.error["message"]
    assert "REQRUN_ENCRYPTION_KEYS" in record.error["message"]
    assert fake_upstream.count() == 0
    stored = unreadable.replace(" ", "_")
    assert [w.stored for w in unreadable_warnings(caplog)] == [stored]
    assert "gAAAAA" not in caplog.text


def test_models_says_the_provider_key_cannot_be_read(tenant, live_api, fake_upstream):
    Upstream.objects.filter(project=tenant.project).update(
        provider_key_encrypted=under_a_dropped_key(b"sk-test-provider-key-1234")
    )

    response = httpx.get(
        f"{live_api.url}/v1/models", headers={"Authorization": f"Bearer {tenant.raw_key}"}
    )

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "encryption_key_missing"
    assert fake_upstream.count() == 0


def test_a_stream_the_web_cannot_decrypt_ends_with_an_error_event_and_fails(
    tenant, live_api, settings, caplog
):
    # The operator dropped the key the worker still encrypts with and restarted the web
    # while the stream ran: the web cannot open the chunks that follow.
    chat = {**CHAT, "model": "script:slowchunks700", "stream": True}
    with (
        caplog.at_level(logging.WARNING),
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{live_api.url}/v1/chat/completions",
            json=chat,
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
        ) as response,
    ):
        pieces = response.iter_raw()
        first = next(pieces)
        settings.REQRUN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
        rest = b"".join(pieces)

    assert first.startswith(b"data: ")
    assert b"[DONE]" not in rest  # never a clean end on a truncated answer
    event = json.loads(rest.split(b"event: error\ndata: ", 1)[1])["error"]
    assert event["code"] == "encryption_key_missing"
    assert "REQRUN_ENCRYPTION_KEYS" in event["message"]
    public_id = response.headers["reqrun-request-id"]
    record = wait_until(
        lambda: Request.objects.filter(public_id=public_id, finished_at__isnull=False).first(),
        message="the request never ended",
    )
    assert (record.status, record.partial) == ("failed", True)
    assert record.error["code"] == "encryption_key_missing"
    assert "REQRUN_ENCRYPTION_KEYS" in record.error["message"]
    assert [a.error_code for a in record.attempts.all()] == ["encryption_key_missing"]
    warnings = unreadable_warnings(caplog)
    assert [(w.request_id, w.stored) for w in warnings] == [(public_id, "stream")]
    assert "gAAAAA" not in caplog.text
