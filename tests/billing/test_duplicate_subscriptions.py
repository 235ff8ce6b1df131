"""Two checkouts opened in two tabs and both paid: the account keeps the subscription bound
first, and the other is canceled at Paddle at once, audited, and explained to the owners."""

from datetime import timedelta

import pytest
from django.core import mail

from accounts.models import AuditEvent
from billing.models import Subscription
from projects.limits import limits_for
from tests.billing import payloads
from tests.billing.paddle_stub import paddle_error

pytestmark = pytest.mark.django_db

FIRST = payloads.SUBSCRIPTION_ID
SECOND = "sub_01hv8secondtab00000000000000"


@pytest.fixture
def two_tabs(alice_account, check_out, paddle_api):
    """alice opened Pro in one tab and Team in another before paying either; Paddle made a
    subscription of each. Returns a `subscription.created` event per subscription id."""
    pro, team = check_out(alice_account, "pro"), check_out(alice_account, "team")
    events = {}
    for subscription_id, checkout, plan in ((FIRST, pro, "pro"), (SECOND, team, "team")):
        entity = payloads.subscription(
            account_id=alice_account.public_id,
            subscription_id=subscription_id,
            price_id=payloads.PRICES[plan],
            transaction_id=checkout.paddle_transaction_id,
        )
        paddle_api.subscriptions[subscription_id] = entity
        events[subscription_id] = payloads.event("subscription.created", entity)
    return events


def cancel_calls(paddle_api, subscription_id: str):
    return paddle_api.calls_to("POST", f"/subscriptions/{subscription_id}/cancel")


@pytest.mark.parametrize("kept,extra", [(FIRST, SECOND), (SECOND, FIRST)])
def test_the_subscription_bound_second_is_canceled_at_once_and_owners_are_told(
    webhooks, alice_account, two_tabs, paddle_api, kept, extra
):
    webhooks.deliver(two_tabs[kept])
    mail.outbox.clear()

    event = webhooks.deliver(two_tabs[extra])

    assert event.processed_at is not None, event.error
    assert "canceled" in event.outcome
    [call] = cancel_calls(paddle_api, extra)
    assert call.body["effective_from"] == "immediately"
    assert cancel_calls(paddle_api, kept) == []
    assert Subscription.objects.get(paddle_subscription_id=extra).status == "canceled"
    assert Subscription.objects.get(paddle_subscription_id=kept).status == "active"
    kept_plan = "pro" if kept == FIRST else "team"
    assert limits_for(alice_account).plan_code == kept_plan
    audit = AuditEvent.objects.get(account=alice_account, action="duplicate_subscription_canceled")
    assert audit.target == extra and audit.actor is None
    [email] = mail.outbox
    assert email.to == ["alice@example.com"]
    assert "canceled" in email.subject.lower()
    assert "will not charge" in email.body
    assert "support@reqrun.com" in email.body
    assert extra in email.body and kept in email.body


def test_a_replayed_event_changes_nothing_the_second_time(
    webhooks, alice_account, two_tabs, paddle_api
):
    webhooks.deliver(two_tabs[FIRST])
    webhooks.deliver(two_tabs[SECOND])
    mail.outbox.clear()
    audits = AuditEvent.objects.count()

    # Paddle redelivers the same event; the worker runs its task again; an event of the
    # second subscription from before the cancellation arrives late.
    assert webhooks.post(two_tabs[SECOND]).status_code == 200
    webhooks.process(two_tabs[SECOND]["event_id"])
    late = {**two_tabs[SECOND]["data"], "status": "active"}
    occurred = payloads.now() - timedelta(seconds=1)
    stale = webhooks.deliver(payloads.event("subscription.activated", late, occurred_at=occurred))

    assert "ignored" in stale.outcome
    assert len(cancel_calls(paddle_api, SECOND)) == 1
    assert Subscription.objects.get(paddle_subscription_id=SECOND).status == "canceled"
    assert limits_for(alice_account).plan_code == "pro"
    assert AuditEvent.objects.count() == audits
    assert mail.outbox == []


def test_a_failed_cancel_is_retried_later_not_lost(webhooks, alice_account, two_tabs, paddle_api):
    webhooks.deliver(two_tabs[FIRST])
    mail.outbox.clear()
    paddle_api.fail_next(paddle_error(503, "internal_error", "Service unavailable"))

    failed = webhooks.deliver(two_tabs[SECOND])

    assert failed.processed_at is None
    assert failed.retry_at is not None  # the billing sweep tries it again
    assert not Subscription.objects.filter(paddle_subscription_id=SECOND).exists()
    assert limits_for(alice_account).plan_code == "pro"
    assert mail.outbox == []

    retried = webhooks.process(two_tabs[SECOND]["event_id"])  # what the sweep does when due

    assert retried.processed_at is not None, retried.error
    assert Subscription.objects.get(paddle_subscription_id=SECOND).status == "canceled"
    assert len(mail.outbox) == 1


def test_a_new_subscription_after_the_old_one_ended_is_kept(
    webhooks, alice_account, two_tabs, paddle_api
):
    webhooks.deliver(two_tabs[FIRST])
    Subscription.objects.filter(paddle_subscription_id=FIRST).update(status="canceled")

    event = webhooks.deliver(two_tabs[SECOND])

    assert event.processed_at is not None, event.error
    assert cancel_calls(paddle_api, SECOND) == []
    assert Subscription.objects.get(paddle_subscription_id=SECOND).status == "active"
    assert limits_for(alice_account).plan_code == "team"
