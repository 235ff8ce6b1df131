"""Operators see subscriptions and raw events in admin, and can reprocess an event."""

import pytest
from django.urls import reverse

from billing.models import BillingCustomer
from billing.tasks import process_webhook_event
from tests.billing import payloads
from tests.conftest import delete_in_admin, sign_in_to_admin
from tests.factories import (
    InvoiceFactory,
    SubscriptionFactory,
    UserFactory,
    WebhookEventFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(operator_client):
    return operator_client


def test_admin_lists_subscriptions_and_events(operator):
    subscription = SubscriptionFactory()
    event = WebhookEventFactory(error="No ReqRun account for this event.")

    assert (
        subscription.paddle_subscription_id
        in operator.get("/admin/billing/subscription/").content.decode()
    )
    events_page = operator.get("/admin/billing/webhookevent/?processing=no_account")
    assert event.event_id in events_page.content.decode()
    detail = operator.get(f"/admin/billing/webhookevent/{event.pk}/change/").content.decode()
    assert "payload" in detail.lower()


def test_events_left_for_an_admin_are_listed_with_their_reason(
    operator, webhooks, alice_account, check_out
):
    checkout = check_out(alice_account)
    mismatched = payloads.subscription(
        account_id=alice_account.public_id,
        transaction_id=checkout.paddle_transaction_id,
        customer_id=payloads.OTHER_CUSTOMER_ID,
    )
    event = webhooks.deliver(payloads.event("subscription.created", mismatched))
    waiting = webhooks.deliver(
        payloads.event("subscription.updated", payloads.subscription(account_id=None))
    )

    page = operator.get("/admin/billing/webhookevent/?processing=admin").content.decode()

    assert event.event_id in page
    assert "Customer mismatch" in page
    assert waiting.event_id not in page  # still on its retry schedule


def test_staff_without_superuser_do_not_see_payloads(client):
    from django.contrib.auth.models import Permission

    staff = UserFactory(email="staff@example.com", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_webhookevent"))
    event = WebhookEventFactory(payload={"data": {"email": "customer-secret@example.com"}})
    sign_in_to_admin(client, staff)

    page = client.get(f"/admin/billing/webhookevent/{event.pk}/change/").content.decode()

    assert event.event_id in page
    assert "customer-secret@example.com" not in page


def test_reprocess_runs_a_failed_event_again(
    operator, webhooks, check_out, alice_account, django_capture_on_commit_callbacks
):
    # An update for a subscription ReqRun cannot place yet fails...
    payload = payloads.event(
        "subscription.updated", payloads.subscription(account_id=alice_account.public_id)
    )
    event = webhooks.deliver(payload)
    assert event.processed_at is None and event.error
    # ...until the transaction event of alice's checkout names that subscription.
    checkout = check_out(alice_account)
    webhooks.deliver(
        payloads.event(
            "transaction.completed",
            payloads.transaction(account_id=None, transaction_id=checkout.paddle_transaction_id),
        )
    )

    with django_capture_on_commit_callbacks() as callbacks:
        operator.post(
            "/admin/billing/webhookevent/", {"action": "reprocess", "_selected_action": [event.pk]}
        )
    event.refresh_from_db()
    assert event.error == ""
    assert len(callbacks) == 1
    process_webhook_event(event.pk)  # what the queued task runs

    event.refresh_from_db()
    assert event.processed_at is not None
    assert event.account == alice_account


@pytest.fixture
def paddle_records(alice_account, check_out):
    """A row of each model that copies Paddle, for alice's account."""
    checkout = check_out(alice_account)
    return [
        SubscriptionFactory(account=alice_account),
        checkout,
        BillingCustomer.objects.get(account=alice_account),
        InvoiceFactory(account=alice_account),
        WebhookEventFactory(account=alice_account),
    ]


def test_paddles_records_are_not_deleted_in_admin(operator, paddle_records):
    """Paddle is the source of truth: without its subscription row an account could buy a
    second one; without its customer or checkout, Paddle's events would no longer bind;
    without an event's row, Paddle's redelivery of that event would be applied again."""
    for row in paddle_records:
        assert delete_in_admin(operator, row) == 403, row._meta.model_name
        assert type(row).objects.filter(pk=row.pk).exists(), row._meta.model_name


def test_paddles_records_are_read_not_saved_in_admin(operator, paddle_records):
    """Every field is read-only there, yet a save would write the whole row back as the
    request read it: a webhook's write landing meanwhile (a subscription's new status, say)
    would be undone."""
    for row in paddle_records:
        change = reverse(f"admin:billing_{row._meta.model_name}_change", args=[row.pk])

        page = operator.get(change)
        saved = operator.post(change, {})

        assert page.status_code == 200, row
        assert 'name="_save"' not in page.content.decode(), row
        assert saved.status_code == 403, row
