"""Webhook intake: only verified, well-formed Paddle events are stored, each exactly once."""

import asyncio
import json
import logging
import time

import httpx
import pytest

from billing.models import Subscription, WebhookEvent
from tests.billing import payloads
from tests.billing.conftest import WEBHOOK_URL

pytestmark = pytest.mark.django_db

SENTINEL = "sentinel-7c1f0e-never-logged"


def subscription_created(account_id="acc_nobody"):
    return payloads.event("subscription.created", payloads.subscription(account_id=account_id))


def assert_nothing_stored():
    assert WebhookEvent.objects.count() == 0
    assert Subscription.objects.count() == 0


def test_a_signed_event_is_stored_and_left_for_the_worker(webhooks, alice_account):
    payload = subscription_created(alice_account.public_id)

    response = webhooks.post(payload)

    assert response.status_code == 200
    event = WebhookEvent.objects.get(event_id=payload["event_id"])
    assert event.event_type == "subscription.created"
    assert event.payload == payload
    assert event.processed_at is None  # processing happens after commit, in a worker
    assert not Subscription.objects.exists()


def test_a_redelivered_event_is_answered_200_and_stored_once(webhooks, alice_account, check_out):
    payload = subscription_created(alice_account.public_id)
    payload["data"]["transaction_id"] = check_out(alice_account).paddle_transaction_id

    first = webhooks.post(payload)
    webhooks.process(payload["event_id"])
    second = webhooks.post(payload)  # Paddle signs each delivery afresh

    assert first.status_code == second.status_code == 200
    assert WebhookEvent.objects.filter(event_id=payload["event_id"]).count() == 1
    assert Subscription.objects.count() == 1


def test_the_same_event_id_with_another_body_changes_nothing(webhooks, alice_account, check_out):
    payload = subscription_created(alice_account.public_id)
    payload["data"]["transaction_id"] = check_out(alice_account).paddle_transaction_id
    webhooks.deliver(payload)
    before = Subscription.objects.values().get()
    altered = {**payload, "data": {**payload["data"], "status": "canceled"}}

    response = webhooks.post(altered)

    assert response.status_code == 200
    assert WebhookEvent.objects.get().payload["data"]["status"] == "active"
    assert Subscription.objects.values().get() == before


@pytest.mark.parametrize(
    "signature",
    [
        "",  # unsigned
        "ts=notanumber;h1=abc",
        "garbage",
        "ts=1;h1=abc;extra=1",
        "ts=" + "9" * 400 + ";h1=abc",  # a number too large to compare with the clock
    ],
)
def test_unsigned_or_malformed_signatures_are_refused(webhooks, signature):
    response = webhooks.post(subscription_created(), signature=signature or "")

    assert response.status_code == 403
    assert_nothing_stored()


def test_a_signature_with_several_h1_values_passes_when_one_matches(webhooks):
    body = payloads.encode(subscription_created())
    timestamp, right = payloads.sign(body).split(";")
    wrong = "h1=" + "0" * 64

    accepted = webhooks.post(body=body, signature=f"{timestamp};{wrong};{right}")
    refused = webhooks.post(body=body, signature=f"{timestamp};{wrong};{wrong}")

    assert accepted.status_code == 200
    assert refused.status_code == 403
    assert WebhookEvent.objects.count() == 1


@pytest.mark.parametrize("spacing", ["{ts}; {h1}", " {ts};{h1}", "{ts};{h1} "])
def test_a_signature_header_with_spaces_is_refused(webhooks, spacing):
    body = payloads.encode(subscription_created())
    timestamp, digest = payloads.sign(body).split(";")

    response = webhooks.post(body=body, signature=spacing.format(ts=timestamp, h1=digest))

    assert response.status_code == 403
    assert b"Traceback" not in response.content
    assert_nothing_stored()


def test_a_signature_made_with_another_secret_is_refused(webhooks):
    response = webhooks.post(subscription_created(), secret="pdl_ntfset_someone_else")

    assert response.status_code == 403
    assert b"Traceback" not in response.content
    assert_nothing_stored()


def test_a_body_changed_after_signing_is_refused(webhooks):
    payload = subscription_created()
    signature = payloads.sign(payloads.encode(payload))
    payload["data"]["custom_data"] = {"account_id": "acc_attacker"}

    response = webhooks.post(payload, signature=signature)

    assert response.status_code == 403
    assert_nothing_stored()


@pytest.mark.parametrize("offset", [-60, -6, 60])
def test_timestamps_outside_the_tolerance_are_refused(webhooks, offset):
    response = webhooks.post(subscription_created(), timestamp=int(time.time()) + offset)

    assert response.status_code == 403
    assert_nothing_stored()


def envelope(**fields) -> bytes:
    base = {
        "event_id": "evt_1",
        "event_type": "subscription.created",
        "occurred_at": "2024-04-12T10:18:49.621022Z",
        "data": {},
    }
    return json.dumps(
        {key: value for key, value in {**base, **fields}.items() if value is not None}
    ).encode()


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id": "evt_1", "event_type": "subscription.created", ',
        b"[1, 2, 3]",
        envelope(event_id=None),
        envelope(event_id=7),
        envelope(event_id="evt_" + "x" * 61),  # longer than the column
        envelope(event_type=None),
        envelope(occurred_at=None),
        envelope(data=None),
        b'"a JSON string"',
        envelope(occurred_at="yesterday"),
        envelope(occurred_at="2024-04-12T10:18:49"),  # no time zone
        envelope(occurred_at="2024-02-30T10:18:49Z"),
        # Valid where written, but before year 1 or after 9999 in UTC: PostgreSQL would
        # store it, and no row read could load it back.
        envelope(occurred_at="0001-01-01T00:00:00+01:00"),
        envelope(occurred_at="9999-12-31T23:00:00-05:00"),
        envelope(data=[]),
        b"\xff\xfe not utf-8",
        envelope(event_id="evt_\x00"),
        envelope(event_type="subscription.\ud800"),
        envelope(data={"name": "a\x00b"}),
        envelope(data={"amount": float("nan")}),
        envelope(data={"deep": "DEEP"}).replace(b'"DEEP"', b"[" * 5000 + b"]" * 5000),
    ],
    ids=[
        "truncated",
        "array",
        "no event id",
        "numeric event id",
        "event id too long",
        "no event type",
        "no time",
        "no data",
        "a string",
        "bad time",
        "naive time",
        "no such day",
        "before year 1 in UTC",
        "after 9999 in UTC",
        "data not an object",
        "not utf-8",
        "nul in the id",
        "lone surrogate in the type",
        "nul in the data",
        "nan in the data",
        "nested too deeply",
    ],
)
def test_signed_but_malformed_bodies_are_refused(webhooks, body):
    response = webhooks.post(body=body)

    assert 400 <= response.status_code < 500
    assert b"Traceback" not in response.content
    assert_nothing_stored()


def test_an_unknown_event_type_is_stored_answered_200_and_ignored(webhooks):
    payload = payloads.event("adjustment.created", {"id": "adj_01hv8test"})

    event = webhooks.deliver(payload)

    assert event.processed_at is not None
    assert event.outcome.startswith("ignored")
    assert event.error == ""


def test_only_post_is_accepted(client, paddle_settings):
    assert client.get(WEBHOOK_URL).status_code == 405


def test_without_paddle_settings_the_webhook_refuses_everything(webhooks, settings):
    settings.PADDLE_WEBHOOK_SECRET = ""
    settings.PADDLE_API_KEY = ""
    settings.PADDLE_CLIENT_TOKEN = ""

    response = webhooks.post(subscription_created())

    assert response.status_code == 503
    assert_nothing_stored()


def test_rejected_and_accepted_bodies_never_reach_the_logs(webhooks, alice_account, caplog):
    payload = subscription_created(alice_account.public_id)
    payload["data"]["custom_data"]["note"] = SENTINEL
    caplog.set_level(logging.DEBUG)

    webhooks.post(payload, secret="wrong")
    webhooks.post(body=b'{"broken": "' + SENTINEL.encode())
    webhooks.post(payload, timestamp=int(time.time()) - 3600)
    webhooks.post(payload)
    webhooks.process(payload["event_id"])

    logged = " ".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert "paddle webhook rejected" in logged
    assert SENTINEL not in logged


def test_a_body_over_the_upload_limit_is_refused_413_in_plain_words(
    webhooks, alice_account, settings, caplog
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    payload = subscription_created(alice_account.public_id)
    payload["data"]["custom_data"]["note"] = SENTINEL * 100
    caplog.set_level(logging.DEBUG)

    response = webhooks.post(payload)  # validly signed: only its size is wrong

    assert response.status_code == 413
    assert response["Content-Type"] == "text/plain"
    assert response.content.decode() == "body is larger than 2048 bytes"
    assert_nothing_stored()
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert (warning.levelname, warning.getMessage()) == ("WARNING", "paddle webhook rejected")
    assert (warning.status_code, warning.exc_info) == (413, None)
    logged = " ".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert SENTINEL not in logged


def test_an_oversized_body_sent_in_chunks_is_refused_413_too(paddle_settings, settings):
    """Under ASGI, as served, with no Content-Length to refuse it by."""
    from reqrun.asgi import application

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = payloads.encode(subscription_created()) + b" " * 4096

    async def chunks():
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    async def post():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            return await client.post(
                WEBHOOK_URL,
                content=chunks(),
                headers={
                    "Paddle-Signature": payloads.sign(body),
                    "Content-Type": "application/json",
                },
            )

    response = asyncio.run(post())

    assert "content-length" not in response.request.headers
    assert (response.status_code, response.text) == (413, "body is larger than 2048 bytes")
    assert_nothing_stored()
