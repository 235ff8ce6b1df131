"""What is kept of Paddle's events: once processed, only what accounting needs; and events
older than the retention window are purged by the billing sweep."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from billing.event_retention import EVENT_RETENTION
from billing.models import Invoice, WebhookEvent
from billing.tasks import sweep_billing
from billing.webhooks import process_event
from tests.billing import payloads

pytestmark = pytest.mark.django_db

EMAIL = "dana.customer@example.com"


def with_personal_details(data: dict) -> dict:
    """The entity as Paddle can send it with its related customer, address and business."""
    return {
        **data,
        "customer": payloads.customer(customer_id=data["customer_id"], email=EMAIL)
        | {"name": "Dana Customer"},
        "address": {"first_line": "1 Example Street", "postal_code": "10115", "country_code": "DE"},
        "business": {"name": "Dana GmbH", "tax_identifier": "DE123456789"},
        "billing_details": {"additional_information": f"Invoices to {EMAIL}"},
        "payments": [{"method_details": {"card": {"cardholder_name": "Dana Customer"}}}],
    }


def test_a_processed_events_payload_keeps_accounting_fields_only(
    webhooks, alice_account, check_out
):
    checkout = check_out(alice_account)
    data = with_personal_details(
        payloads.transaction(account_id=None, transaction_id=checkout.paddle_transaction_id)
    )
    customer_event = payloads.event(
        "customer.updated", payloads.customer(customer_id=payloads.CUSTOMER_ID, email=EMAIL)
    )

    event = webhooks.deliver(payloads.event("transaction.completed", data))
    ignored = webhooks.deliver(customer_event)

    for stored in (event, ignored):
        assert stored.processed_at is not None
        text = json.dumps(stored.payload)
        assert EMAIL not in text
        assert "Dana" not in text and "Example Street" not in text
    kept = event.payload["data"]
    assert event.payload["event_type"] == "transaction.completed"
    assert event.payload["event_id"] == event.event_id
    assert kept["id"] == checkout.paddle_transaction_id
    assert kept["customer_id"] == payloads.CUSTOMER_ID
    assert kept["subscription_id"] == payloads.SUBSCRIPTION_ID
    assert kept["status"] == "completed"
    assert kept["details"]["totals"]["grand_total"] == "2900"
    assert kept["currency_code"] == "USD"
    assert kept["billed_at"] == data["billed_at"]


def test_a_cut_down_event_can_still_be_reprocessed(webhooks, alice_account, check_out):
    checkout = check_out(alice_account)
    data = with_personal_details(
        payloads.transaction(account_id=None, transaction_id=checkout.paddle_transaction_id)
    )
    event = webhooks.deliver(payloads.event("transaction.completed", data))
    Invoice.objects.all().delete()
    WebhookEvent.objects.filter(pk=event.pk).update(processed_at=None)

    process_event(event_pk=event.pk)

    event.refresh_from_db()
    assert event.processed_at is not None and event.error == ""
    invoice = Invoice.objects.get()
    assert (invoice.account, invoice.amount_minor) == (alice_account, 2900)


def test_an_event_left_for_an_admin_keeps_no_email_either(webhooks, alice_account):
    data = with_personal_details(payloads.subscription(account_id=alice_account.public_id))

    event = webhooks.deliver(payloads.event("subscription.created", data))

    assert event.processed_at is None and event.error
    assert EMAIL not in json.dumps(event.payload)


def test_the_billing_sweep_purges_events_past_retention(webhooks):
    old = webhooks.deliver(payloads.event("adjustment.created", {"id": "adj_01hv8old"}))
    recent = webhooks.deliver(payloads.event("adjustment.created", {"id": "adj_01hv8new"}))
    now = timezone.now()
    WebhookEvent.objects.filter(pk=old.pk).update(
        received_at=now - EVENT_RETENTION - timedelta(hours=1)
    )
    WebhookEvent.objects.filter(pk=recent.pk).update(
        received_at=now - EVENT_RETENTION + timedelta(hours=1)
    )

    sweep_billing()

    assert list(WebhookEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    assert EVENT_RETENTION == timedelta(days=90)
