"""The pricing page and the dashboard billing page: who sees what, and checkout wiring."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.utils import timezone

from accounts.models import Membership
from billing.models import Subscription
from billing.services import enforce_past_due_grace, sync_account_plan
from tests.billing import payloads
from tests.factories import InvoiceFactory, SubscriptionFactory, set_accepted_requests

pytestmark = pytest.mark.django_db

PADDLE_JS = "https://cdn.paddle.com/paddle/v2/paddle.js"


def checkout_config(html: str) -> dict:
    match = re.search(
        r'<script id="paddle-checkout-config" type="application/json">(.*?)</script>', html, re.S
    )
    return json.loads(match.group(1))


def test_pricing_lists_plans_from_the_database(client, paddle_settings):
    html = client.get("/pricing").content.decode()

    for name in ("Free", "Pro", "Team", "Enterprise"):
        assert name in html
    assert "$29" in html and "$199" in html
    assert "Contact us" in html
    assert "500,000" in html and "5,000,000" in html  # monthly requests in the limits table
    assert "Sign up to upgrade" in html
    assert PADDLE_JS not in html  # anonymous visitors cannot buy: no checkout script


def test_pricing_prices_follow_plan_rows(client, paddle_settings):
    from projects.models import Plan

    Plan.objects.filter(code="pro").update(price_cents_monthly=3900)

    assert "$39" in client.get("/pricing").content.decode()


def test_an_owner_gets_paddle_checkout(client, alice, alice_account, paddle_settings):
    client.force_login(alice)

    html = client.get("/pricing").content.decode()

    assert html.count(PADDLE_JS) == 1
    assert 'data-checkout-plan="pro"' in html
    assert 'data-checkout-plan="team"' in html
    config = checkout_config(html)
    assert config["token"] == paddle_settings.PADDLE_CLIENT_TOKEN
    assert config["environment"] == "sandbox"
    assert config["checkoutUrl"] == "/app/billing/checkout"
    assert config["csrfToken"]
    assert config["successUrl"].endswith("/app/billing/?checkout=done")
    # The server creates the transaction: the browser is told neither account nor customer.
    assert alice_account.public_id not in json.dumps(config)
    assert "alice@example.com" not in json.dumps(config)


def test_production_environment_reaches_the_checkout(client, alice, alice_account, paddle_settings):
    paddle_settings.PADDLE_ENVIRONMENT = "production"
    client.force_login(alice)

    assert checkout_config(client.get("/pricing").content.decode())["environment"] == "production"


def test_members_cannot_buy(client, bob, paddle_settings):
    client.force_login(bob)

    html = client.get("/pricing").content.decode()

    assert PADDLE_JS not in html
    assert "data-checkout-plan" not in html
    assert "Only account owners can change the plan." in html


def test_a_subscriber_switches_plans_instead_of_buying_twice(
    client, alice, alice_account, paddle_settings
):
    SubscriptionFactory(account=alice_account)
    client.force_login(alice)

    html = client.get("/pricing").content.decode()

    assert PADDLE_JS not in html
    assert "Switch to Team" in html


def test_without_paddle_settings_pages_say_billing_is_not_configured(client, alice, alice_account):
    assert client.get("/pricing").status_code == 200
    assert "Billing is not configured" in client.get("/pricing").content.decode()

    client.force_login(alice)
    for url in ("/pricing", "/app/billing/"):
        response = client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        assert "Billing is not configured" in html
        assert PADDLE_JS not in html


def test_owner_sees_plan_status_renewal_usage_and_invoices(
    client, alice, alice_account, paddle_settings
):
    subscription = SubscriptionFactory(account=alice_account)
    InvoiceFactory(account=alice_account, invoice_number="325-10566", amount_minor=2900)
    set_accepted_requests(alice_account, 9_000)
    client.force_login(alice)

    html = client.get("/app/billing/").content.decode()

    assert "Renews on" in html
    assert f"{subscription.current_period_end:%B} {subscription.current_period_end.day}" in html
    assert "9,000 of 10,000 accepted requests" in html  # the factory leaves the plan on Free
    assert 'class="quota-bar quota-bar-warning"' in html
    assert 'style="width: 90%"' in html
    assert "325-10566" in html and "29.00 USD" in html
    assert "Cancel at period end" in html
    assert "Payment method and billing details" in html


def test_a_member_sees_a_read_only_page(client, bob, alice_account, paddle_settings):
    SubscriptionFactory(account=alice_account)
    invoice = InvoiceFactory(account=alice_account, invoice_number="325-10566")
    client.force_login(bob)

    response = client.get("/app/billing/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Only owners can change the plan" in html
    assert "accepted requests" in html
    assert "325-10566" not in html
    assert "/app/billing/cancel" not in html
    for path in (
        "/app/billing/cancel",
        "/app/billing/resume",
        "/app/billing/portal",
        "/app/billing/change-plan",
    ):
        assert client.post(path, {"plan": "team"}).status_code == 404
    pdf = f"/app/billing/invoices/{invoice.paddle_transaction_id}/pdf"
    assert client.get(pdf).status_code == 404
    assert not Subscription.objects.get().cancel_scheduled


def test_charlie_sees_only_his_own_account(client, charlie, alice_account, paddle_settings):
    SubscriptionFactory(account=alice_account)
    invoice = InvoiceFactory(account=alice_account, invoice_number="325-10566")
    client.force_login(charlie)

    html = client.get("/app/billing/").content.decode()

    assert "325-10566" not in html
    assert "Renews on" not in html
    pdf = f"/app/billing/invoices/{invoice.paddle_transaction_id}/pdf"
    assert client.get(pdf).status_code == 404
    # Charlie's own (empty) billing: cancelling does nothing to alice's subscription.
    client.post("/app/billing/cancel")
    assert not Subscription.objects.get().cancel_scheduled


def test_billing_needs_a_signed_in_user(client):
    response = client.get("/app/billing/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_user_without_an_account_is_sent_to_start_one(client, bob, alice_account):
    SubscriptionFactory(account=alice_account)
    Membership.objects.filter(user=bob).delete()  # removed from alice's account
    client.force_login(bob)

    response = client.get("/app/billing/")

    assert response.status_code == 302
    assert response["Location"] == "/app/no-account/"
    response = client.post("/app/billing/cancel")
    assert response["Location"] == "/app/no-account/"
    assert not Subscription.objects.get().cancel_scheduled


def test_a_past_due_subscription_whose_grace_ended_is_not_said_to_stay_active(
    client, alice, alice_account, paddle_settings
):
    subscription = SubscriptionFactory(account=alice_account, status="past_due")
    sync_account_plan(account=alice_account)
    Subscription.objects.update(past_due_since=timezone.now() - timedelta(days=15))
    enforce_past_due_grace()
    client.force_login(alice)

    html = client.get("/app/billing/").content.decode()

    subscription.refresh_from_db()
    ended = subscription.grace_ends_at
    assert "stays active" not in html
    assert f"grace period ended on <strong>{ended:%B} {ended.day}, {ended.year}</strong>" in html
    assert "the account is on Free until Paddle collects the payment" in html


def test_a_scheduled_pause_is_shown_instead_of_a_renewal(
    client, alice, alice_account, paddle_settings
):
    subscription = SubscriptionFactory(account=alice_account)
    Subscription.objects.update(
        scheduled_change_action="pause",
        scheduled_change_effective_at=subscription.current_period_end,
    )
    client.force_login(alice)

    html = client.get("/app/billing/").content.decode()

    end = subscription.current_period_end
    assert "Renews on" not in html
    assert f"Paddle pauses this subscription on <strong>{end:%B} {end.day}, {end.year}" in html


def test_after_a_past_due_grace_ended_the_cards_point_to_the_payment_method(
    client, alice, alice_account, webhooks, check_out, paddle_api
):
    checkout = check_out(alice_account)
    entity = payloads.subscription(
        account_id=alice_account.public_id, transaction_id=checkout.paddle_transaction_id
    )
    webhooks.deliver(payloads.event("subscription.created", entity))
    webhooks.deliver(payloads.event("subscription.past_due", {**entity, "status": "past_due"}))
    Subscription.objects.update(past_due_since=timezone.now() - timedelta(days=15))
    enforce_past_due_grace()  # what the billing sweep does: the account is on Free now
    client.force_login(alice)

    for url in ("/app/billing/", "/pricing"):
        html = client.get(url).content.decode()

        # "Switch to Pro" could only answer "You are already on Pro."
        assert "Switch to Pro" not in html, url
        assert "The payment for Pro is past due." in html, url
        assert (
            '<a href="/app/billing/#subscription">Update your payment method</a> to return to Pro.'
            in html
        ), url
        assert PADDLE_JS not in html, url

    response = client.post("/app/billing/change-plan", {"plan": "pro"})

    assert [str(message) for message in get_messages(response.wsgi_request)] == [
        "The payment for Pro is past due: update your payment method to return to Pro."
    ]
    assert paddle_api.calls_to("PATCH", f"/subscriptions/{entity['id']}") == []


@pytest.mark.parametrize("grace_ended", [False, True], ids=["in-grace", "beyond-grace"])
def test_while_past_due_no_card_offers_checkout_or_a_switch(
    client, alice, alice_account, webhooks, check_out, paddle_api, grace_ended
):
    checkout = check_out(alice_account)
    entity = payloads.subscription(
        account_id=alice_account.public_id, transaction_id=checkout.paddle_transaction_id
    )
    webhooks.deliver(payloads.event("subscription.created", entity))
    webhooks.deliver(payloads.event("subscription.past_due", {**entity, "status": "past_due"}))
    if grace_ended:
        Subscription.objects.update(past_due_since=timezone.now() - timedelta(days=15))
        enforce_past_due_grace()
    calls = len(paddle_api.calls)
    client.force_login(alice)

    for url in ("/app/billing/", "/pricing"):
        html = client.get(url).content.decode()

        assert "data-checkout-plan" not in html, url
        assert PADDLE_JS not in html, url
        assert "Switch to" not in html, url
        assert (
            'Your payment is past due. <a href="/app/billing/#subscription">Update your payment '
            "method</a> before changing plans." in html
        ), url

    switch = client.post("/app/billing/change-plan", {"plan": "team"})
    assert [str(message) for message in get_messages(switch.wsgi_request)] == [
        "Your payment is past due: update your payment method before changing plans."
    ]
    bought = client.post("/app/billing/checkout", {"plan": "team"})
    assert bought.status_code == 400
    assert bought.json() == {
        "error": "Your payment is past due: update your payment method on the billing page "
        "instead of buying another subscription."
    }
    assert len(paddle_api.calls) == calls  # nothing was asked of Paddle


def test_a_paused_subscription_outranks_a_newer_ended_one(
    client, alice, alice_account, paddle_settings, paddle_api
):
    SubscriptionFactory(account=alice_account, status="paused")
    SubscriptionFactory(account=alice_account, status="canceled", canceled_at=timezone.now())
    client.force_login(alice)

    html = client.get("/app/billing/").content.decode()

    assert "Your subscription is paused" in html
    assert "Resume subscription" in html
    assert PADDLE_JS not in html
    response = client.post("/app/billing/checkout", {"plan": "pro"})
    assert response.status_code == 400
    assert paddle_api.calls == []
