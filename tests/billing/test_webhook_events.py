"""Processing Paddle events: subscription state, the plan it pays for, invoices and emails."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.models import AuditEvent
from billing.models import CheckoutTransaction, Invoice, Subscription, WebhookEvent
from billing.selectors import webhook_event_ids_to_retry
from billing.services import send_usage_notices
from billing.webhooks import RETRY_DELAYS, process_event
from projects.limits import limits_for, set_plan
from tests.billing import payloads
from tests.billing.payloads import PRICES
from tests.factories import set_accepted_requests

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def alice_checkout(check_out, alice_account) -> CheckoutTransaction:
    """Alice opened checkout: her account's Paddle customer and the transaction ReqRun made."""
    return check_out(alice_account)


def checkout_transaction_id(account) -> str:
    return CheckoutTransaction.objects.filter(account=account).first().paddle_transaction_id


def deliver_subscription(webhooks, account, event_type, *, occurred_at=None, **fields):
    if event_type == "subscription.created":
        # Paddle names the transaction a subscription came from in `subscription.created`.
        fields.setdefault("transaction_id", checkout_transaction_id(account))
    data = payloads.subscription(account_id=account.public_id, **fields)
    return webhooks.deliver(payloads.event(event_type, data, occurred_at=occurred_at))


def subscription_row():
    return Subscription.objects.get(paddle_subscription_id=payloads.SUBSCRIPTION_ID)


def test_subscription_created_puts_the_account_on_the_paid_plan(webhooks, alice_account):
    assert limits_for(alice_account).plan_code == "free"

    event = deliver_subscription(webhooks, alice_account, "subscription.created")

    assert event.processed_at is not None and event.error == ""
    assert event.account == alice_account
    subscription = subscription_row()
    assert subscription.account == alice_account
    assert subscription.status == "active"
    assert subscription.plan.code == "pro"
    assert subscription.paddle_customer_id == payloads.CUSTOMER_ID
    assert subscription.current_period_end is not None
    limits = limits_for(alice_account)
    assert limits.plan_code == "pro"
    assert limits.monthly_requests == 500_000
    assert limits.projects == 5
    audit = AuditEvent.objects.get(account=alice_account, action="plan_changed")
    assert audit.target == "Free → Pro"


@pytest.mark.parametrize("event_type", ["subscription.activated", "subscription.trialing"])
def test_activated_and_trialing_grant_the_plan(webhooks, alice_account, alice_checkout, event_type):
    status = "trialing" if event_type.endswith("trialing") else "active"
    # The checkout's transaction event names the subscription before these arrive.
    paid = payloads.transaction(
        account_id=None, transaction_id=alice_checkout.paddle_transaction_id
    )
    webhooks.deliver(payloads.event("transaction.completed", paid))

    deliver_subscription(
        webhooks, alice_account, event_type, status=status, price_id=PRICES["team"]
    )

    assert subscription_row().status == status
    assert limits_for(alice_account).plan_code == "team"


def test_an_upgrade_raises_the_limits_at_once(webhooks, alice_account):
    deliver_subscription(webhooks, alice_account, "subscription.created")
    assert limits_for(alice_account).projects == 5

    deliver_subscription(webhooks, alice_account, "subscription.updated", price_id=PRICES["team"])

    limits = limits_for(alice_account)
    assert limits.plan_code == "team"
    assert limits.projects == 25
    assert limits.monthly_requests == 5_000_000


def test_a_period_end_cancellation_keeps_the_plan_until_canceled(
    webhooks, alice_account, alice_checkout
):
    created = payloads.subscription(
        account_id=alice_account.public_id, transaction_id=alice_checkout.paddle_transaction_id
    )
    webhooks.deliver(payloads.event("subscription.created", created))

    webhooks.deliver(payloads.event("subscription.updated", payloads.cancel_scheduled(created)))

    subscription = subscription_row()
    assert subscription.cancel_scheduled
    assert subscription.scheduled_change_effective_at == subscription.current_period_end
    assert limits_for(alice_account).plan_code == "pro"

    canceled = payloads.subscription(
        account_id=alice_account.public_id, status="canceled", canceled_at=payloads.now()
    )
    webhooks.deliver(payloads.event("subscription.canceled", canceled))

    subscription.refresh_from_db()
    assert subscription.status == "canceled"
    assert not subscription.cancel_scheduled
    limits = limits_for(alice_account)
    assert limits.plan_code == "free"
    assert limits.projects == 1
    assert limits.monthly_requests == 10_000
    assert list(
        AuditEvent.objects.filter(action="plan_changed")
        .values_list("target", flat=True)
        .order_by("created_at", "pk")
    ) == ["Free → Pro", "Pro → Free"]


def test_past_due_keeps_the_plan_for_the_grace_period_and_tells_the_owner(
    webhooks, alice_account, bob
):
    deliver_subscription(webhooks, alice_account, "subscription.created")
    mail.outbox.clear()

    deliver_subscription(webhooks, alice_account, "subscription.past_due", status="past_due")

    subscription = subscription_row()
    assert subscription.status == "past_due"
    assert subscription.past_due_since is not None
    assert limits_for(alice_account).plan_code == "pro"
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"]  # owners only, not bob
    assert "past due" in mail.outbox[0].subject
    assert subscription.grace_ends_at.strftime("%B") in mail.outbox[0].body

    # A second past_due-status event is not a new problem: no second email.
    deliver_subscription(webhooks, alice_account, "subscription.updated", status="past_due")
    assert len(mail.outbox) == 1


def test_a_subscription_first_heard_of_as_past_due_tells_the_owner(
    webhooks, alice_account, alice_checkout
):
    # The checkout's transaction names the subscription; its first subscription event to
    # arrive (the others late or lost) says the renewal payment failed.
    paid = payloads.transaction(
        account_id=None, transaction_id=alice_checkout.paddle_transaction_id
    )
    webhooks.deliver(payloads.event("transaction.completed", paid))
    mail.outbox.clear()

    deliver_subscription(webhooks, alice_account, "subscription.past_due", status="past_due")

    assert subscription_row().status == "past_due"
    assert limits_for(alice_account).plan_code == "pro"
    assert [message.subject for message in mail.outbox] == ["[ReqRun] Your payment is past due"]


def test_past_due_beyond_the_grace_period_falls_back_to_free(webhooks, alice_account):
    from billing.services import enforce_past_due_grace

    deliver_subscription(webhooks, alice_account, "subscription.created")
    deliver_subscription(webhooks, alice_account, "subscription.past_due", status="past_due")
    Subscription.objects.update(past_due_since=payloads.now() - timedelta(days=15))

    assert enforce_past_due_grace() == 1

    assert limits_for(alice_account).plan_code == "free"

    # Paddle collects the payment after all: the plan comes back.
    deliver_subscription(webhooks, alice_account, "subscription.updated")
    assert limits_for(alice_account).plan_code == "pro"


def test_paused_falls_back_to_free_and_resumed_restores_the_plan(webhooks, alice_account):
    deliver_subscription(webhooks, alice_account, "subscription.created")

    deliver_subscription(
        webhooks, alice_account, "subscription.paused", status="paused", paused_at=payloads.now()
    )
    assert subscription_row().status == "paused"
    assert limits_for(alice_account).plan_code == "free"

    deliver_subscription(webhooks, alice_account, "subscription.resumed")
    assert subscription_row().status == "active"
    assert limits_for(alice_account).plan_code == "pro"


def test_an_out_of_date_event_changes_nothing(webhooks, alice_account):
    now = payloads.now()
    deliver_subscription(
        webhooks, alice_account, "subscription.created", occurred_at=now - timedelta(minutes=10)
    )
    deliver_subscription(
        webhooks,
        alice_account,
        "subscription.canceled",
        status="canceled",
        canceled_at=now,
        occurred_at=now,
    )

    # An update from before the cancellation arrives late.
    late = deliver_subscription(
        webhooks,
        alice_account,
        "subscription.updated",
        price_id=PRICES["team"],
        occurred_at=now - timedelta(minutes=5),
    )

    assert late.processed_at is not None
    assert late.outcome.startswith("ignored")
    subscription = subscription_row()
    assert subscription.status == "canceled"
    assert subscription.plan.code == "pro"
    assert subscription.last_event_occurred_at == now
    assert limits_for(alice_account).plan_code == "free"


def test_events_applied_out_of_order_end_in_the_latest_state(
    webhooks, alice_account, alice_checkout
):
    now = payloads.now()
    activated = payloads.event(
        "subscription.activated",
        payloads.subscription(account_id=alice_account.public_id),
        occurred_at=now,
    )
    created = payloads.event(
        "subscription.created",
        payloads.subscription(
            account_id=alice_account.public_id,
            status="trialing",
            transaction_id=alice_checkout.paddle_transaction_id,
        ),
        occurred_at=now - timedelta(seconds=1),
    )

    # `activated` names no transaction: it waits until `created` binds the subscription.
    early = webhooks.deliver(activated)
    assert early.processed_at is None and not Subscription.objects.exists()
    webhooks.deliver(created)
    process_event(event_pk=early.pk)  # its retry, from the billing sweep

    assert subscription_row().status == "active"


def test_processing_an_event_twice_changes_nothing_more(webhooks, alice_account):
    event = deliver_subscription(webhooks, alice_account, "subscription.created")
    processed_at = event.processed_at

    webhooks.process(event.event_id)

    event.refresh_from_db()
    assert event.processed_at == processed_at
    assert AuditEvent.objects.filter(action="plan_changed").count() == 1


def test_an_event_for_an_unknown_account_is_kept_for_admins(webhooks):
    payload = payloads.event(
        "subscription.created", payloads.subscription(account_id="acc_doesnotexist")
    )

    event = webhooks.deliver(payload)

    assert event.processed_at is None
    assert event.account is None
    assert "No ReqRun account" in event.error
    assert event.retry_at is not None  # the transaction event naming it may still come
    assert not Subscription.objects.exists()


def test_an_unmapped_price_leaves_the_plan_alone(webhooks, alice_account):
    set_plan(account=alice_account, plan_code="pro")

    deliver_subscription(
        webhooks, alice_account, "subscription.created", price_id="pri_01hv8unknown0000000000000"
    )

    assert subscription_row().plan is None
    assert limits_for(alice_account).plan_code == "pro"


def test_an_enterprise_account_is_never_moved_by_billing(webhooks, alice_account):
    set_plan(account=alice_account, plan_code="enterprise")

    deliver_subscription(
        webhooks,
        alice_account,
        "subscription.canceled",
        status="canceled",
        canceled_at=payloads.now(),
    )

    assert limits_for(alice_account).plan_code == "enterprise"


def test_transaction_completed_records_an_invoice(webhooks, alice_account, alice_checkout):
    data = payloads.transaction(
        account_id=alice_account.public_id,
        grand_total="2900",
        transaction_id=alice_checkout.paddle_transaction_id,
    )

    webhooks.deliver(payloads.event("transaction.completed", data))
    webhooks.deliver(payloads.event("transaction.completed", data))  # a second event, same txn

    invoice = Invoice.objects.get()
    assert invoice.account == alice_account
    assert invoice.paddle_transaction_id == data["id"]
    assert invoice.invoice_number == "325-10566"
    assert invoice.amount_minor == 2900
    assert invoice.amount == "29.00 USD"
    assert invoice.billed_at is not None


def test_an_invoice_time_past_9999_in_utc_is_not_kept(
    webhooks, alice_account, alice_checkout, client, alice
):
    data = payloads.transaction(
        account_id=alice_account.public_id, transaction_id=alice_checkout.paddle_transaction_id
    )
    data["billed_at"] = "9999-12-31T23:00:00-05:00"  # year 10000 in UTC

    webhooks.deliver(payloads.event("transaction.completed", data))

    assert Invoice.objects.get().billed_at is None
    client.force_login(alice)
    assert client.get("/app/billing/").status_code == 200


def test_a_renewal_without_custom_data_finds_the_account_by_subscription(webhooks, alice_account):
    deliver_subscription(webhooks, alice_account, "subscription.created")
    data = payloads.transaction(account_id=None, transaction_id="txn_01hv8renewal00000000000000")

    webhooks.deliver(payloads.event("transaction.completed", data))

    assert Invoice.objects.get().account == alice_account


def test_a_failed_renewal_payment_emails_the_owner(webhooks, alice_account, bob):
    deliver_subscription(webhooks, alice_account, "subscription.created")
    data = payloads.transaction(
        account_id=None,
        status="past_due",
        invoice_number=None,
        transaction_id="txn_01hv8renewal00000000000000",
    )

    event = webhooks.deliver(payloads.event("transaction.payment_failed", data))

    assert event.processed_at is not None
    assert [message.to for message in mail.outbox] == [["alice@example.com"]]
    assert "payment failed" in mail.outbox[0].subject.lower()
    assert "Paddle, our payment provider, will try again" in mail.outbox[0].body
    assert not Invoice.objects.exists()


def test_a_card_declined_in_reqruns_checkout_emails_nobody(webhooks, alice_account, alice_checkout):
    # The buyer sees the decline in Paddle's checkout; no subscription exists to retry for.
    data = payloads.transaction(
        account_id=alice_account.public_id,
        status="ready",
        subscription_id=None,
        invoice_number=None,
        transaction_id=alice_checkout.paddle_transaction_id,
    )

    event = webhooks.deliver(payloads.event("transaction.payment_failed", data))

    assert event.processed_at is not None and event.error == ""
    assert mail.outbox == []
    assert event.account == alice_account
    assert "checkout" in event.outcome
    assert not Subscription.objects.exists() and not Invoice.objects.exists()


def test_billing_emails_show_the_account_name_as_written(webhooks, alice_account, alice_checkout):
    alice_account.name = "Ben & Jerry's <Lab>"
    alice_account.save(update_fields=["name"])
    deliver_subscription(webhooks, alice_account, "subscription.created")
    deliver_subscription(webhooks, alice_account, "subscription.past_due", status="past_due")
    failed = payloads.transaction(
        account_id=None, transaction_id="txn_01hv8renewal00000000000000", invoice_number=None
    )
    webhooks.deliver(payloads.event("transaction.payment_failed", failed))
    set_accepted_requests(alice_account, 500_000)  # Pro's quota
    send_usage_notices()

    assert len(mail.outbox) == 3  # past due, payment failed, usage
    for message in mail.outbox:
        assert "Ben & Jerry's <Lab>" in message.body, message.subject
        assert "&amp;" not in message.body and "&#x27;" not in message.body


def test_a_failing_event_keeps_its_error_and_can_be_reprocessed(webhooks, alice_account):
    payload = payloads.event(
        "subscription.created", {"custom_data": {"account_id": alice_account.public_id}}
    )

    event = webhooks.deliver(payload)

    assert event.processed_at is None
    assert "KeyError" in event.error
    assert WebhookEvent.objects.filter(processed_at__isnull=True).exclude(error="").count() == 1


def test_a_failed_event_is_retried_on_a_schedule_then_left_for_an_admin(webhooks, alice_account):
    payload = payloads.event(
        "subscription.created", payloads.subscription(account_id="acc_not_created_yet")
    )
    event = webhooks.deliver(payload)
    assert (event.processed_at, event.failures) == (None, 1)
    assert "acc_not_created_yet" in event.error or "account" in event.error.lower()

    assert event.pk not in webhook_event_ids_to_retry()  # not before its first wait
    waits = [event.retry_at - timezone.now()]
    for _ in RETRY_DELAYS:
        assert event.pk in webhook_event_ids_to_retry(now=event.retry_at)
        process_event(event_pk=event.pk)  # what the billing sweep queues when it is due
        event.refresh_from_db()
        if event.retry_at:
            waits.append(event.retry_at - timezone.now())
    assert [round(wait / timedelta(minutes=1)) for wait in waits] == [5, 30, 120, 720, 1440]
    assert (event.failures, event.retry_at) == (len(RETRY_DELAYS) + 1, None)
    assert event.pk not in webhook_event_ids_to_retry(now=timezone.now() + timedelta(days=30))


def test_an_event_that_failed_before_its_account_was_known_succeeds_on_retry(
    webhooks, alice_account
):
    subscription = payloads.subscription(account_id=alice_account.public_id)
    early = webhooks.deliver(
        payloads.event("subscription.updated", {**subscription, "custom_data": None})
    )
    assert early.processed_at is None and early.failures == 1

    deliver_subscription(webhooks, alice_account, "subscription.created")
    process_event(event_pk=early.pk)  # what the billing sweep does once retry_at is due

    early.refresh_from_db()
    assert early.processed_at is not None and early.error == ""
    assert early.account == alice_account


def test_an_event_whose_task_was_lost_is_queued_again(webhooks, alice_account):
    event = WebhookEvent.objects.create(
        event_id="evt_lost",
        event_type="subscription.created",
        occurred_at=timezone.now(),
        payload={},
    )
    assert event.pk not in webhook_event_ids_to_retry()
    assert event.pk in webhook_event_ids_to_retry(now=timezone.now() + timedelta(minutes=3))
