"""Owner actions that call Paddle's API (a real HTTP stand-in on loopback): cancel at period
end, keep, change plan, customer portal, invoice PDF — and what happens when Paddle fails."""

import json
import time
from urllib.parse import urlsplit

import pytest
from django.contrib.messages import get_messages

from accounts.models import AuditEvent
from billing.models import BillingCustomer, CheckoutTransaction, Invoice, Subscription
from projects.limits import limits_for
from tests.billing import payloads
from tests.billing.paddle_stub import Failure, closed_port_url, paddle_error
from tests.billing.payloads import PRICES
from tests.factories import InvoiceFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def subscribed(webhooks, paddle_api, alice_account, check_out):
    """Alice's account on Pro through a Paddle subscription both sides know about, bought
    through a checkout transaction ReqRun created."""
    checkout = check_out(alice_account)
    entity = payloads.subscription(
        account_id=alice_account.public_id, transaction_id=checkout.paddle_transaction_id
    )
    paddle_api.subscriptions[entity["id"]] = entity
    webhooks.deliver(payloads.event("subscription.created", entity))
    return Subscription.objects.get()


@pytest.fixture
def owner(client, alice):
    client.force_login(alice)
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_cancel_at_period_end_asks_paddle_and_keeps_the_plan(owner, subscribed, paddle_api):
    response = owner.post("/app/billing/cancel")

    assert response.status_code == 302
    call = paddle_api.calls[-1]
    assert (call.method, call.path) == ("POST", f"/subscriptions/{payloads.SUBSCRIPTION_ID}/cancel")
    assert call.body == {"effective_from": "next_billing_period"}
    assert call.headers["Authorization"] == "Bearer pdl_sdbx_apikey_01hv8test"
    subscribed.refresh_from_db()
    assert subscribed.cancel_scheduled
    assert subscribed.scheduled_change_effective_at == subscribed.current_period_end
    assert limits_for(subscribed.account).plan_code == "pro"
    assert AuditEvent.objects.filter(action="subscription_cancel_scheduled").exists()
    end = subscribed.current_period_end
    assert f"Pro stays active until {end:%B} {end.day}, {end.year}" in messages_of(response)[0]

    page = owner.get("/app/billing/").content.decode()
    assert "Canceled at the end of the billing period" in page
    assert "Keep my subscription" in page


def test_keep_withdraws_the_scheduled_cancellation(owner, subscribed, paddle_api):
    owner.post("/app/billing/cancel")

    owner.post("/app/billing/resume")

    call = paddle_api.calls[-1]
    assert (call.method, call.path) == ("PATCH", f"/subscriptions/{payloads.SUBSCRIPTION_ID}")
    assert call.body == {"scheduled_change": None}
    subscribed.refresh_from_db()
    assert not subscribed.cancel_scheduled
    assert subscribed.status == "active"


def test_resume_a_paused_subscription(owner, webhooks, subscribed, paddle_api, alice_account):
    paused = payloads.subscription(
        account_id=alice_account.public_id, status="paused", paused_at=payloads.now()
    )
    paddle_api.subscriptions[paused["id"]] = paused
    webhooks.deliver(payloads.event("subscription.paused", paused))
    assert limits_for(alice_account).plan_code == "free"

    owner.post("/app/billing/resume")

    call = paddle_api.calls[-1]
    assert (call.method, call.path) == ("POST", f"/subscriptions/{payloads.SUBSCRIPTION_ID}/resume")
    assert call.body == {"effective_from": "immediately"}
    assert limits_for(alice_account).plan_code == "pro"


def made_at_paddle_earlier(paddle_api, **changes) -> dict:
    """Paddle accepted an owner's action whose answer ReqRun then failed to record (the
    database out right after Paddle answered, or the process killed): Paddle has the
    subscription changed, ReqRun's copy does not."""
    entity = {
        **paddle_api.subscriptions[payloads.SUBSCRIPTION_ID],
        **changes,
        "updated_at": payloads.iso(payloads.now()),
    }
    paddle_api.subscriptions[entity["id"]] = entity
    return entity


def refused_then_read(paddle_api, refused: tuple[str, str]) -> None:
    """Paddle refused the action (its stand-in refuses what the subscription's state does not
    allow, as Paddle does), and ReqRun then read the subscription."""
    action, read = paddle_api.calls[-2:]
    assert (action.method, action.path) == refused
    assert (read.method, read.path) == ("GET", f"/subscriptions/{payloads.SUBSCRIPTION_ID}")


def test_a_cancel_paddle_already_made_is_recorded_and_shown_as_done(owner, subscribed, paddle_api):
    made = made_at_paddle_earlier(
        paddle_api,
        **payloads.cancel_scheduled(paddle_api.subscriptions[subscribed.paddle_subscription_id]),
    )

    response = owner.post("/app/billing/cancel")

    refused_then_read(paddle_api, ("POST", f"/subscriptions/{payloads.SUBSCRIPTION_ID}/cancel"))
    subscribed.refresh_from_db()
    assert subscribed.cancel_scheduled
    assert payloads.iso(subscribed.last_event_occurred_at) == made["updated_at"]
    assert limits_for(subscribed.account).plan_code == "pro"
    assert AuditEvent.objects.filter(action="subscription_cancel_scheduled").count() == 1
    end = subscribed.current_period_end
    assert messages_of(response) == [
        "Your subscription was already set to end: "
        f"Pro stays active until {end:%B} {end.day}, {end.year}."
    ]
    assert "Keep my subscription" in owner.get("/app/billing/").content.decode()


def test_a_cancel_of_a_subscription_paddle_already_ended_shows_it_ended(
    owner, subscribed, paddle_api
):
    made_at_paddle_earlier(
        paddle_api, **payloads.canceled_now(paddle_api.subscriptions[payloads.SUBSCRIPTION_ID])
    )

    response = owner.post("/app/billing/cancel")

    refused_then_read(paddle_api, ("POST", f"/subscriptions/{payloads.SUBSCRIPTION_ID}/cancel"))
    assert Subscription.objects.get().status == "canceled"
    assert limits_for(subscribed.account).plan_code == "free"
    assert messages_of(response) == ["Your subscription has already ended."]


def test_a_cancel_refused_for_another_reason_says_what_to_do_and_changes_nothing(
    owner, subscribed, paddle_api
):
    # The owner set the subscription to pause in Paddle's customer portal; its event is late.
    entity = paddle_api.subscriptions[payloads.SUBSCRIPTION_ID]
    made_at_paddle_earlier(
        paddle_api,
        scheduled_change={
            "action": "pause",
            "effective_at": entity["current_billing_period"]["ends_at"],
            "resume_at": None,
        },
    )
    before = Subscription.objects.values().get()
    audit_count = AuditEvent.objects.count()

    response = owner.post("/app/billing/cancel")

    refused_then_read(paddle_api, ("POST", f"/subscriptions/{payloads.SUBSCRIPTION_ID}/cancel"))
    assert messages_of(response) == [
        "Paddle refused to cancel the subscription: cannot update subscription, pending "
        "scheduled changes. Paddle has another change scheduled for it: open the customer "
        "portal to see it, and try again once it is withdrawn or has taken effect."
    ]
    assert Subscription.objects.values().get() == before
    assert AuditEvent.objects.count() == audit_count


def test_a_resume_paddle_already_made_is_recorded_and_shown_as_done(
    owner, webhooks, subscribed, paddle_api, alice_account
):
    active = paddle_api.subscriptions[payloads.SUBSCRIPTION_ID]
    paused = {**active, "status": "paused", "paused_at": payloads.iso(payloads.now())}
    paddle_api.subscriptions[paused["id"]] = paused
    webhooks.deliver(payloads.event("subscription.paused", paused))
    made_at_paddle_earlier(paddle_api, **active)

    response = owner.post("/app/billing/resume")

    refused_then_read(paddle_api, ("POST", f"/subscriptions/{payloads.SUBSCRIPTION_ID}/resume"))
    assert Subscription.objects.get().status == "active"
    assert limits_for(alice_account).plan_code == "pro"
    assert AuditEvent.objects.filter(action="subscription_resumed").count() == 1
    assert messages_of(response) == ["Your subscription already continues; it renews as before."]


PADDLE_JS = "https://cdn.paddle.com/paddle/v2/paddle.js"


def pause(paddle_api, webhooks, event_type: str, **changes) -> None:
    """Paddle pauses (or schedules a pause of) the subscription and tells us by webhook."""
    entity = {**paddle_api.subscriptions[payloads.SUBSCRIPTION_ID], **changes}
    paddle_api.subscriptions[entity["id"]] = entity
    webhooks.deliver(payloads.event(event_type, entity))


def assert_checkout_refused(owner, paddle_api, message: str) -> None:
    transactions = CheckoutTransaction.objects.count()

    response = owner.post("/app/billing/checkout", {"plan": "team"})

    assert response.status_code == 400
    assert response.json() == {"error": message}
    assert CheckoutTransaction.objects.count() == transactions
    assert paddle_api.calls_to("POST", "/transactions")[1:] == []  # only the first checkout


def test_a_paused_subscription_is_resumed_not_bought_again(
    owner, webhooks, subscribed, paddle_api, alice_account
):
    pause(
        paddle_api,
        webhooks,
        "subscription.paused",
        status="paused",
        paused_at=payloads.iso(payloads.now()),
        current_billing_period=None,
        next_billed_at=None,
    )
    assert limits_for(alice_account).plan_code == "free"

    for url in ("/app/billing/", "/pricing"):
        html = owner.get(url).content.decode()
        assert PADDLE_JS not in html, url
        assert "data-checkout-plan" not in html, url
        assert "Upgrade to" not in html, url
        assert 'href="/app/billing/#subscription">Resume it</a> to change plans.' in html, url
    assert "Resume subscription" in owner.get("/app/billing/").content.decode()
    assert_checkout_refused(
        owner,
        paddle_api,
        "Your subscription is paused: resume it on the billing page instead of buying another.",
    )
    response = owner.post("/app/billing/change-plan", {"plan": "team"})
    assert messages_of(response) == ["Resume your subscription before changing its plan."]

    owner.post("/app/billing/resume")

    assert limits_for(alice_account).plan_code == "pro"


def test_a_paused_subscription_is_canceled_from_the_billing_page_at_once(
    owner, webhooks, subscribed, paddle_api, alice_account
):
    """Paddle ends a paused subscription at once (no period runs while paused, and the
    account is already on Free); the billing page offers it beside Resume."""
    pause(
        paddle_api,
        webhooks,
        "subscription.paused",
        status="paused",
        paused_at=payloads.iso(payloads.now()),
        current_billing_period=None,
        next_billed_at=None,
    )
    assert "Cancel subscription" in owner.get("/app/billing/").content.decode()

    response = owner.post("/app/billing/cancel")

    call = paddle_api.calls[-1]
    assert (call.method, call.path) == ("POST", f"/subscriptions/{payloads.SUBSCRIPTION_ID}/cancel")
    assert call.body == {"effective_from": "immediately"}
    assert Subscription.objects.get().status == "canceled"
    assert limits_for(alice_account).plan_code == "free"
    assert AuditEvent.objects.filter(action="subscription_canceled").count() == 1
    assert messages_of(response) == [
        "Your paused subscription has ended; it will not resume or bill again."
    ]


def test_a_scheduled_pause_offers_resume_not_checkout(
    owner, webhooks, subscribed, paddle_api, alice_account
):
    end = paddle_api.subscriptions[payloads.SUBSCRIPTION_ID]["current_billing_period"]["ends_at"]
    pause(
        paddle_api,
        webhooks,
        "subscription.updated",
        next_billed_at=None,
        scheduled_change={"action": "pause", "effective_at": end, "resume_at": None},
    )

    html = owner.get("/app/billing/").content.decode()

    assert "Resume subscription" in html
    assert "Cancel at period end" not in html
    assert "Switch to Team" not in html
    assert 'href="/app/billing/#subscription">Resume it</a> to change plans.' in html
    assert PADDLE_JS not in html
    assert_checkout_refused(
        owner,
        paddle_api,
        "Your subscription is set to pause: resume it on the billing page instead of buying "
        "another.",
    )

    response = owner.post("/app/billing/resume")

    assert messages_of(response) == ["Your subscription continues; it renews as before."]
    call = paddle_api.calls[-1]
    assert (call.method, call.path) == ("PATCH", f"/subscriptions/{payloads.SUBSCRIPTION_ID}")
    assert call.body == {"scheduled_change": None}
    subscribed.refresh_from_db()
    assert subscribed.scheduled_change_action == ""
    assert "Renews on" in owner.get("/app/billing/").content.decode()


def test_change_plan_upgrades_with_proration(owner, subscribed, paddle_api):
    owner.post("/app/billing/change-plan", {"plan": "team"})

    call = paddle_api.calls[-1]
    assert call.method == "PATCH"
    assert call.body == {
        "items": [{"price_id": PRICES["team"], "quantity": 1}],
        "proration_billing_mode": "prorated_immediately",
    }
    assert limits_for(subscribed.account).plan_code == "team"


# Each owner action: what comes before it, its form, and what it leaves (cancel scheduled, plan).
OWNER_ACTIONS = {
    "cancel": ([], ("/app/billing/cancel", {}), (True, "pro")),
    "keep": ([("/app/billing/cancel", {})], ("/app/billing/resume", {}), (False, "pro")),
    "change plan": ([], ("/app/billing/change-plan", {"plan": "team"}), (False, "team")),
}


@pytest.mark.parametrize("action", OWNER_ACTIONS)
def test_an_event_paddle_sent_before_an_owner_action_does_not_undo_it(
    owner, webhooks, subscribed, paddle_api, action
):
    earlier_actions, (path, form), (cancel_scheduled, plan) = OWNER_ACTIONS[action]
    for earlier in earlier_actions:
        owner.post(*earlier)
    # Paddle sends an event of the subscription as it is just before the owner acts; the
    # delivery is late (or a retry) and arrives after Paddle has answered the action.
    sent_before = payloads.event(
        "subscription.updated", paddle_api.subscriptions[payloads.SUBSCRIPTION_ID]
    )
    owner.post(path, form)
    recorded = Subscription.objects.values().get()

    late = webhooks.deliver(sent_before)

    assert late.outcome.startswith("ignored"), late.outcome
    assert Subscription.objects.values().get() == recorded
    assert Subscription.objects.get().cancel_scheduled is cancel_scheduled
    assert limits_for(subscribed.account).plan_code == plan


def test_an_event_paddle_sent_after_an_owner_action_applies(
    owner, webhooks, subscribed, paddle_api
):
    owner.post("/app/billing/cancel")
    # Then the owner keeps the subscription in Paddle's customer portal, and Paddle says so.
    kept = {**paddle_api.subscriptions[payloads.SUBSCRIPTION_ID], "scheduled_change": None}

    event = webhooks.deliver(payloads.event("subscription.updated", kept))

    assert event.outcome.startswith("applied"), event.outcome
    subscribed.refresh_from_db()
    assert not subscribed.cancel_scheduled
    assert subscribed.last_event_occurred_at == event.occurred_at
    assert limits_for(subscribed.account).plan_code == "pro"


def test_change_plan_to_an_unbuyable_plan_is_refused_without_calling_paddle(
    owner, subscribed, paddle_api
):
    calls = len(paddle_api.calls)

    response = owner.post("/app/billing/change-plan", {"plan": "enterprise"})

    assert messages_of(response) == ["That plan cannot be bought here."]
    assert len(paddle_api.calls) == calls


def test_portal_button_redirects_to_a_fresh_portal_session(owner, subscribed, paddle_api):
    response = owner.post("/app/billing/portal")

    call = paddle_api.calls[-1]
    assert (call.method, call.path) == (
        "POST",
        f"/customers/{payloads.CUSTOMER_ID}/portal-sessions",
    )
    assert call.body == {"subscription_ids": [payloads.SUBSCRIPTION_ID]}
    assert response.status_code == 302
    assert response["Location"].startswith("https://customer-portal.paddle.com/")


def form_action_allows(policy: str, url: str) -> bool:
    """Whether a CSP's form-action lets a form's submission be redirected to `url` (browsers
    check every redirect of a form's navigation against it)."""
    directives = dict(
        (part.strip().split(" ", 1) + [""])[:2] for part in policy.split(";") if part.strip()
    )
    target = urlsplit(url)
    for source in directives["form-action"].split():
        if source == "'self'":
            allowed = target.scheme in ("", "http") and target.netloc in ("", "testserver")
        else:
            scheme, _, host = source.partition("://")
            allowed = target.scheme == scheme and (
                target.hostname == host
                or (host.startswith("*.") and target.hostname.endswith(host[1:]))
            )
        if allowed:
            return True
    return False


def test_the_portal_button_is_allowed_to_reach_the_portal(owner, subscribed, paddle_api):
    """The button is a form; a Content-Security-Policy form-action without Paddle would stop
    the browser at the redirect, and the portal would never open."""
    page = owner.get("/app/billing/")
    assert 'action="/app/billing/portal"' in page.content.decode()

    response = owner.post("/app/billing/portal")

    assert form_action_allows(page["Content-Security-Policy"], response["Location"])


def test_invoice_link_redirects_to_the_pdf(owner, alice_account, paddle_settings, paddle_api):
    invoice = InvoiceFactory(account=alice_account)

    response = owner.get(f"/app/billing/invoices/{invoice.paddle_transaction_id}/pdf")

    call = paddle_api.calls[-1]
    assert (call.method, call.path) == (
        "GET",
        f"/transactions/{invoice.paddle_transaction_id}/invoice",
    )
    assert response.status_code == 302
    assert response["Location"].startswith("https://")
    assert invoice.paddle_transaction_id in response["Location"]


def test_another_tenants_invoice_is_a_404(
    client, charlie, alice_account, paddle_settings, paddle_api
):
    invoice = InvoiceFactory(account=alice_account)
    client.force_login(charlie)

    response = client.get(f"/app/billing/invoices/{invoice.paddle_transaction_id}/pdf")

    assert response.status_code == 404
    assert paddle_api.calls == []


FAILURES = {
    "network error": None,
    "4xx": paddle_error(
        400, "subscription_locked_pending_changes", "Subscription has pending changes."
    ),
    "5xx": paddle_error(500, "internal_error", "Something went wrong."),
    "bad gateway html": Failure(502, b"<html>Bad gateway</html>", "text/html"),
    "unreadable answer": Failure(200, b'{"data": {"unexpected": true}}'),
    "data not an object": Failure(200, b'{"data": []}'),
    "error not an object": Failure(429, b'{"error": "rate limited"}'),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
@pytest.mark.parametrize(
    ("method", "path", "form"),
    [
        ("post", "/app/billing/cancel", {}),
        ("post", "/app/billing/change-plan", {"plan": "team"}),
        ("post", "/app/billing/portal", {}),
    ],
)
def test_paddle_failures_show_a_message_and_change_nothing(
    owner, subscribed, paddle_api, settings, failure, method, path, form
):
    if failure is None:
        settings.PADDLE_API_BASE_URL = closed_port_url()
    else:
        paddle_api.fail_next(failure)
    before = Subscription.objects.values().get()
    audit_count = AuditEvent.objects.count()

    response = getattr(owner, method)(path, form)

    assert response.status_code == 302
    assert response["Location"] == "/app/billing/"
    [message] = messages_of(response)
    assert "Paddle" in message
    if failure is not None and failure.status == 400:
        assert "Subscription has pending changes." in message
    assert "Traceback" not in message
    assert Subscription.objects.values().get() == before
    assert AuditEvent.objects.count() == audit_count
    assert limits_for(subscribed.account).plan_code == "pro"


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_invoice_pdf_failures_show_a_message(
    owner, alice_account, paddle_settings, paddle_api, settings, failure
):
    invoice = InvoiceFactory(account=alice_account)
    if failure is None:
        settings.PADDLE_API_BASE_URL = closed_port_url()
    else:
        paddle_api.fail_next(failure)

    response = owner.get(f"/app/billing/invoices/{invoice.paddle_transaction_id}/pdf")

    assert response.status_code == 302
    assert response["Location"] == "/app/billing/"
    assert "Paddle" in messages_of(response)[0]
    assert Invoice.objects.count() == 1


def test_actions_say_billing_is_not_configured(owner, subscribed, settings, paddle_api):
    settings.PADDLE_API_KEY = ""
    calls = len(paddle_api.calls)

    response = owner.post("/app/billing/cancel")

    assert messages_of(response) == ["Billing is not configured on this server."]
    assert len(paddle_api.calls) == calls
    subscribed.refresh_from_db()
    assert not subscribed.cancel_scheduled


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
@pytest.mark.parametrize("failing_call", ["customer", "transaction"])
def test_checkout_failures_answer_a_message_and_record_nothing(
    owner, alice_account, paddle_settings, paddle_api, settings, failure, failing_call
):
    if failing_call == "transaction":
        owner.post("/app/billing/checkout", {"plan": "pro"})  # the customer now exists
        CheckoutTransaction.objects.all().delete()
    if failure is None:
        settings.PADDLE_API_BASE_URL = closed_port_url()
    else:
        paddle_api.fail_next(failure)

    response = owner.post("/app/billing/checkout", {"plan": "pro"})

    assert response.status_code == 400
    assert "Paddle" in response.json()["error"]
    assert not CheckoutTransaction.objects.exists()
    customers = BillingCustomer.objects.filter(account=alice_account).count()
    assert customers == (1 if failing_call == "transaction" else 0)


def answer(entity: dict, status: int = 200) -> Failure:
    """Paddle's answer with `entity` as its data, scripted."""
    return Failure(status, json.dumps({"data": entity, "meta": {}}).encode())


TOO_LONG = "x" * 61  # with its prefix, longer than every Paddle id column
# Valid where written, but year 10000 in UTC: PostgreSQL stores it and cannot load it back.
PAST_9999_IN_UTC = "9999-12-31T23:00:00-05:00"


@pytest.mark.parametrize("field", ["price", "customer"])
def test_a_subscription_answer_with_an_id_too_long_to_keep_changes_nothing(
    owner, subscribed, paddle_api, field
):
    entity = payloads.cancel_scheduled(paddle_api.subscriptions[payloads.SUBSCRIPTION_ID])
    if field == "price":
        entity["items"][0]["price"]["id"] = "pri_" + TOO_LONG
    else:
        entity["customer_id"] = "ctm_" + TOO_LONG
    paddle_api.fail_next(answer(entity))
    before = Subscription.objects.values().get()

    response = owner.post("/app/billing/cancel")

    assert response.status_code == 302
    assert messages_of(response) == [
        "Paddle's answer could not be read, so we could not cancel the subscription."
    ]
    assert Subscription.objects.values().get() == before


def test_a_subscription_answer_with_times_past_9999_in_utc_keeps_them_empty(
    owner, subscribed, paddle_api
):
    entity = payloads.cancel_scheduled(paddle_api.subscriptions[payloads.SUBSCRIPTION_ID])
    entity["current_billing_period"]["ends_at"] = PAST_9999_IN_UTC
    entity["scheduled_change"]["effective_at"] = PAST_9999_IN_UTC
    entity["updated_at"] = PAST_9999_IN_UTC
    paddle_api.fail_next(answer(entity))

    response = owner.post("/app/billing/cancel")

    assert response.status_code == 302
    subscribed.refresh_from_db()
    assert subscribed.cancel_scheduled
    assert subscribed.current_period_end is None
    assert owner.get("/app/billing/").status_code == 200


@pytest.mark.parametrize("failing_call", ["customer", "transaction"])
def test_checkout_answered_with_an_id_too_long_to_keep_records_nothing(
    owner, alice, alice_account, paddle_settings, paddle_api, failing_call
):
    if failing_call == "transaction":
        owner.post("/app/billing/checkout", {"plan": "pro"})  # the customer now exists
        CheckoutTransaction.objects.all().delete()
        entity = payloads.transaction(
            account_id=None,
            status="ready",
            transaction_id="txn_" + TOO_LONG,
            subscription_id=None,
            invoice_number=None,
        )
    else:
        entity = payloads.customer(customer_id="ctm_" + TOO_LONG, email=alice.email)
    paddle_api.fail_next(answer(entity, 201))

    response = owner.post("/app/billing/checkout", {"plan": "pro"})

    assert response.status_code == 400
    assert response.json()["error"] == (
        "Paddle's answer could not be read, so we could not start the checkout."
        if failing_call == "transaction"
        else "Paddle's answer could not be read, so we could not set up billing."
    )
    assert not CheckoutTransaction.objects.exists()
    customers = BillingCustomer.objects.filter(account=alice_account).count()
    assert customers == (1 if failing_call == "transaction" else 0)


def test_a_cancel_paddle_answers_too_late_says_it_may_have_been_made(
    owner, subscribed, paddle_api, settings
):
    """A read timeout comes after the call was sent: Paddle may have made the change, so the
    owner is not told that nothing changed (the reload shows it once the webhook arrives)."""
    settings.PADDLE_API_TIMEOUT_SECONDS = 0.3
    paddle_api.on_call = lambda call: time.sleep(1)

    response = owner.post("/app/billing/cancel")

    [message] = messages_of(response)
    assert "cannot tell whether the change was made" in message
    assert "nothing was changed" not in message
    subscribed.refresh_from_db()
    assert not subscribed.cancel_scheduled  # ours is changed only by Paddle's answer or event
