"""Billing is bound to the account on the server: ReqRun creates the account's Paddle customer
and the checkout transaction; webhooks attach a subscription only through such a transaction
and only for that customer; the portal opens only for the stored customer."""

import json
import logging

import pytest
from django.contrib.messages import get_messages
from django.core import mail

from accounts.models import Membership
from billing.models import BillingCustomer, CheckoutTransaction, Invoice, Subscription
from billing.services import BillingError
from projects.limits import limits_for
from tests.billing import payloads
from tests.billing.paddle_stub import paddle_error
from tests.factories import AccountFactory, MembershipFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

CHECKOUT_URL = "/app/billing/checkout"


def created_event(account, **fields):
    data = payloads.subscription(account_id=account.public_id, **fields)
    return payloads.event("subscription.created", data)


# ---------- Checkout ----------


def test_checkout_creates_one_customer_per_account_and_a_transaction_for_it(
    client, alice, alice_account, paddle_settings, paddle_api
):
    client.force_login(alice)

    first = client.post(CHECKOUT_URL, {"plan": "pro"})
    second = client.post(CHECKOUT_URL, {"plan": "team"})

    assert first.status_code == second.status_code == 200
    [customer_call] = paddle_api.calls_to("POST", "/customers")
    assert customer_call.body["email"] == "alice@example.com"
    customer = BillingCustomer.objects.get()
    assert customer.account == alice_account
    assert customer.paddle_customer_id == payloads.CUSTOMER_ID

    transaction_calls = paddle_api.calls_to("POST", "/transactions")
    assert len(transaction_calls) == 2
    for call, plan in zip(transaction_calls, ("pro", "team"), strict=True):
        assert call.body["customer_id"] == payloads.CUSTOMER_ID
        assert call.body["custom_data"] == {"account_id": alice_account.public_id}
        assert call.body["items"] == [{"price_id": payloads.PRICES[plan], "quantity": 1}]
    recorded = CheckoutTransaction.objects.order_by("created_at", "pk")
    assert [row.paddle_transaction_id for row in recorded] == [
        first.json()["transaction_id"],
        second.json()["transaction_id"],
    ]
    assert all(row.account == alice_account for row in recorded)
    assert [row.price_id for row in recorded] == [payloads.PRICES["pro"], payloads.PRICES["team"]]
    assert all(row.paddle_customer_id == payloads.CUSTOMER_ID for row in recorded)


def test_checkout_is_for_owners_without_a_live_subscription(
    client, alice, bob, alice_account, paddle_settings, paddle_api
):
    client.force_login(bob)
    assert client.post(CHECKOUT_URL, {"plan": "pro"}).status_code == 404

    client.force_login(alice)
    refused = client.post(CHECKOUT_URL, {"plan": "enterprise"})
    assert refused.status_code == 400
    assert refused.json() == {"error": "That plan cannot be bought here."}
    SubscriptionFactory(account=alice_account)
    assert "already subscribe" in client.post(CHECKOUT_URL, {"plan": "pro"}).json()["error"]
    assert paddle_api.calls == []
    assert not CheckoutTransaction.objects.exists()


def test_an_owners_second_account_never_shares_the_first_accounts_customer(
    alice, alice_account, check_out, paddle_api
):
    check_out(alice_account)
    second = AccountFactory(name="Side project")
    MembershipFactory(user=alice, account=second, role="owner")

    with pytest.raises(BillingError, match="another ReqRun account"):
        check_out(second)

    assert list(BillingCustomer.objects.values_list("account", flat=True)) == [alice_account.pk]
    assert not CheckoutTransaction.objects.filter(account=second).exists()


def test_a_customer_paddle_made_for_the_owners_email_but_nobody_holds_is_used(
    alice, alice_account, check_out, paddle_api
):
    # Paddle created the customer, but our answer was lost: Paddle now refuses a second one.
    paddle_api.customers["ctm_01hv8lostanswer0000000000"] = payloads.customer(
        customer_id="ctm_01hv8lostanswer0000000000", email="alice@example.com"
    )

    checkout = check_out(alice_account)

    assert checkout.paddle_customer_id == "ctm_01hv8lostanswer0000000000"
    assert alice_account.billing_customer.paddle_customer_id == "ctm_01hv8lostanswer0000000000"


def test_a_failed_customer_search_logs_no_email_even_at_debug(
    client, alice, alice_account, paddle_settings, paddle_api, caplog
):
    """The search's URL holds the email (`GET /customers?email=…`): neither the SDK nor the
    HTTP library under it writes that URL, even with LOG_LEVEL=debug."""
    # Paddle has a customer for the email, so ReqRun searches for it by email; that fails.
    paddle_api.customers["ctm_01hv8lostanswer0000000000"] = payloads.customer(
        customer_id="ctm_01hv8lostanswer0000000000", email="alice@example.com"
    )
    paddle_api.fail_next(
        paddle_error(409, "customer_already_exists", "customer email conflicts with customer")
    )
    paddle_api.fail_next(paddle_error(500, "internal_error", "Something went wrong."))
    caplog.set_level(logging.DEBUG)  # the root's level, as LOG_LEVEL=debug sets it
    client.force_login(alice)

    response = client.post(CHECKOUT_URL, {"plan": "pro"})

    assert response.status_code == 400
    assert paddle_api.calls_to("GET", "/customers")  # the search did run, and failed
    logged = " ".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert "paddle api error" in logged
    assert "alice@example.com" not in logged and "alice%40example.com" not in logged


# ---------- Webhooks attach subscriptions only through ReqRun's transactions ----------


@pytest.mark.parametrize(
    "transaction_id", [None, "txn_01hv8notcreatedbyreqrun000"], ids=["none", "foreign"]
)
def test_a_subscription_naming_an_account_without_a_reqrun_transaction_changes_nothing(
    webhooks, alice_account, transaction_id
):
    event = webhooks.deliver(created_event(alice_account, transaction_id=transaction_id))

    assert event.processed_at is None
    assert event.error
    assert not Subscription.objects.exists()
    assert limits_for(alice_account).plan_code == "free"
    if transaction_id:
        assert "did not create" in event.error
        assert event.retry_at is None  # waiting will not make it ours: left for an admin


def test_a_subscription_from_a_reqrun_transaction_is_attached_to_that_account(
    webhooks, alice_account, charlie, check_out
):
    charlie_account = Membership.objects.get(user=charlie).account
    checkout = check_out(alice_account)
    # Whatever custom_data says, the account is the one ReqRun created the transaction for.
    payload = created_event(charlie_account, transaction_id=checkout.paddle_transaction_id)
    payload["data"]["custom_data"] = None

    event = webhooks.deliver(payload)

    assert event.processed_at is not None, event.error
    assert event.account == alice_account
    subscription = Subscription.objects.get()
    assert subscription.account == alice_account
    assert limits_for(alice_account).plan_code == "pro"
    assert limits_for(charlie_account).plan_code == "free"
    checkout.refresh_from_db()
    assert checkout.paddle_subscription_id == payloads.SUBSCRIPTION_ID


def test_a_transaction_event_of_a_reqrun_checkout_binds_its_subscription(
    webhooks, alice_account, check_out
):
    checkout = check_out(alice_account)
    webhooks.deliver(
        payloads.event(
            "transaction.completed",
            payloads.transaction(account_id=None, transaction_id=checkout.paddle_transaction_id),
        )
    )

    # `subscription.activated` names no transaction; the transaction event named it.
    event = webhooks.deliver(
        payloads.event("subscription.activated", payloads.subscription(account_id=None))
    )

    assert event.processed_at is not None, event.error
    assert Subscription.objects.get().account == alice_account
    assert limits_for(alice_account).plan_code == "pro"


def test_a_subscription_for_another_customer_is_left_for_an_admin(
    webhooks, alice_account, check_out
):
    checkout = check_out(alice_account)
    payload = created_event(
        alice_account,
        transaction_id=checkout.paddle_transaction_id,
        customer_id=payloads.OTHER_CUSTOMER_ID,
    )

    event = webhooks.deliver(payload)

    assert event.processed_at is None
    assert event.account == alice_account
    assert event.retry_at is None
    assert "Customer mismatch" in event.error
    assert payloads.OTHER_CUSTOMER_ID in event.error
    assert not Subscription.objects.exists()
    assert limits_for(alice_account).plan_code == "free"


def test_a_known_subscription_reported_with_another_customer_changes_nothing(
    webhooks, alice_account, check_out
):
    checkout = check_out(alice_account)
    webhooks.deliver(created_event(alice_account, transaction_id=checkout.paddle_transaction_id))

    event = webhooks.deliver(
        payloads.event(
            "subscription.canceled",
            payloads.subscription(
                account_id=alice_account.public_id,
                status="canceled",
                canceled_at=payloads.now(),
                customer_id=payloads.OTHER_CUSTOMER_ID,
            ),
        )
    )

    assert event.processed_at is None and "Customer mismatch" in event.error
    assert Subscription.objects.get().status == "active"
    assert limits_for(alice_account).plan_code == "pro"


@pytest.mark.parametrize("event_type", ["transaction.completed", "transaction.payment_failed"])
def test_a_transaction_of_a_known_subscription_for_another_customer_changes_nothing(
    webhooks, alice_account, check_out, event_type
):
    checkout = check_out(alice_account)
    webhooks.deliver(created_event(alice_account, transaction_id=checkout.paddle_transaction_id))
    mail.outbox.clear()

    event = webhooks.deliver(
        payloads.event(
            event_type,
            payloads.transaction(
                account_id=alice_account.public_id,
                transaction_id="txn_01hv8someoneelses00000000",
                customer_id=payloads.OTHER_CUSTOMER_ID,
            ),
        )
    )

    assert event.processed_at is None
    assert event.retry_at is None
    assert "Customer mismatch" in event.error
    assert not Invoice.objects.exists()
    assert mail.outbox == []


# ---------- Portal ----------


def test_the_portal_opens_only_for_the_stored_customer(
    client, alice, alice_account, check_out, paddle_api
):
    check_out(alice_account)
    # A subscription row naming another customer (say, from before the binding).
    other = SubscriptionFactory(
        account=alice_account, paddle_customer_id=payloads.OTHER_CUSTOMER_ID
    )
    client.force_login(alice)

    response = client.post("/app/billing/portal")

    assert response.status_code == 302
    [call] = paddle_api.calls_to("POST", f"/customers/{payloads.CUSTOMER_ID}/portal-sessions")
    assert other.paddle_subscription_id not in json.dumps(call.body)
    assert not paddle_api.calls_to(
        "POST", f"/customers/{payloads.OTHER_CUSTOMER_ID}/portal-sessions"
    )


def test_without_a_stored_customer_there_is_no_portal(
    client, alice, alice_account, paddle_settings, paddle_api
):
    SubscriptionFactory(account=alice_account, paddle_customer_id=payloads.OTHER_CUSTOMER_ID)
    client.force_login(alice)

    response = client.post("/app/billing/portal")

    assert response["Location"] == "/app/billing/"
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "There is no Paddle customer for this account yet."
    ]
    assert paddle_api.calls == []
