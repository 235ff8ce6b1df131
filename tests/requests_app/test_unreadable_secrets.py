"""A stored value whose encryption key has left REQRUN_ENCRYPTION_KEYS (dropped before
`rotate_encryption_keys` ran, or an old backup restored): said so, never a 500 or a crash."""

import json
import logging
from datetime import timedelta

import httpx
from cryptography.fernet import Fernet
from django.utils import timezone

from requests_app.engine.accept import body_digest
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
