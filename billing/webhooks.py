"""Paddle webhooks: verify the signature, store the raw event once, then (in a worker) apply it.

Intake answers fast and does no billing work; processing is idempotent per event and ignores
events older than the last change recorded for the same subscription (an event applied, or
Paddle's answer to an action taken through its API). A new subscription is attached to an
account only through a checkout transaction ReqRun created for that account, and only when its
customer is the account's own; `custom_data` is never trusted for that."""

import logging
import time
import traceback
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from paddle_billing.Notifications import Secret, Verifier
from paddle_billing.Notifications.PaddleSignature import PaddleSignature

from accounts.emails import send_or_retry_on_commit
from accounts.models import Account
from accounts.services import email_owners
from billing import paddle, services
from billing.event_retention import accounting_record
from billing.models import BillingCustomer, CheckoutTransaction, Invoice, Subscription, WebhookEvent
from billing.selectors import subscription_billed_before
from core.untrusted import aware_time, parse_json_to_keep

logger = logging.getLogger(__name__)

# Paddle signs each delivery attempt afresh; it recommends a five-second tolerance.
SIGNATURE_TOLERANCE_SECONDS = 5
# A failed event is tried again after these waits (the billing sweep runs every 5 minutes),
# then left for an admin's "Reprocess" with its reason.
RETRY_DELAYS = (
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=12),
    timedelta(hours=24),
)

SUBSCRIPTION_EVENTS = frozenset(
    {
        "subscription.created",
        "subscription.activated",
        "subscription.updated",
        "subscription.trialing",
        "subscription.past_due",
        "subscription.paused",
        "subscription.resumed",
        "subscription.canceled",
    }
)


class WebhookRejected(Exception):
    """The delivery is refused with `status_code`; nothing was stored."""

    def __init__(self, status_code: int, reason: str):
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


class UnknownAccount(Exception):
    """No ReqRun account matches the event yet; it stays stored, unprocessed, and is retried
    (the event that introduces its subscription may come later), then listed in admin."""


class LeftForAdmin(Exception):
    """The event must not change anything and will not by waiting: it stays unprocessed with
    the reason, without retries, for an admin to look at."""


# ---------- Intake (web process) ----------


def receive(*, request: HttpRequest) -> tuple[WebhookEvent, bool]:
    """Verify and store one delivery; True when it is new and was queued for processing."""
    if not paddle.is_configured():
        raise WebhookRejected(503, "Billing is not configured.")
    body = read_body(request)
    verify_signature(request)
    envelope = parse_envelope(body)
    with transaction.atomic():
        event, created = WebhookEvent.objects.get_or_create(
            event_id=envelope["event_id"], defaults=envelope
        )
        if created:
            from billing.tasks import process_webhook_event  # the task module imports this one

            transaction.on_commit(lambda: process_webhook_event.delay(event.pk), robust=True)
    logger.info(
        "paddle webhook received",
        extra={
            "event_id": event.event_id,
            "event_type": event.event_type,
            "duplicate": not created,
        },
    )
    return event, created


def read_body(request: HttpRequest) -> bytes:
    """The delivery's body. Read before anything else (the SDK's verifier reads it too), so a
    body over Django's upload limit is refused here in the intake's words, not by Django."""
    try:
        return request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise _rejected(413, f"body is larger than {limit} bytes") from None


def verify_signature(request: HttpRequest) -> None:
    header = request.headers.get("Paddle-Signature", "")
    try:
        timestamp, _ = PaddleSignature.parse(header) if header else (None, None)
        # Checked here as well as in the SDK: the SDK skips its check when TEST_MODE is set.
        # A timestamp of hundreds of digits cannot meet a float clock: OverflowError.
        skew = abs(time.time() - timestamp) if timestamp is not None else None
    except (ValueError, TypeError, OverflowError):
        skew = None
    if skew is None:
        raise _rejected(403, "missing or malformed Paddle-Signature")
    if skew > SIGNATURE_TOLERANCE_SECONDS:
        raise _rejected(403, "signature timestamp outside the tolerance")
    try:
        valid = Verifier(maximum_variance=SIGNATURE_TOLERANCE_SECONDS).verify(
            request, Secret(settings.PADDLE_WEBHOOK_SECRET)
        )
    except (ValueError, TypeError, ConnectionRefusedError):
        valid = False
    if not valid:
        raise _rejected(403, "signature does not match")


def parse_envelope(body: bytes) -> dict[str, Any]:
    try:
        payload = parse_json_to_keep(body)
    except ValueError:
        raise _rejected(400, "body is not JSON PostgreSQL can keep") from None
    if not isinstance(payload, dict):
        raise _rejected(400, "body is not a JSON object")
    event_id, event_type = payload.get("event_id"), payload.get("event_type")
    occurred = aware_time(payload.get("occurred_at"))
    if not (
        isinstance(event_id, str)
        and 0 < len(event_id) <= 64
        and isinstance(event_type, str)
        and 0 < len(event_type) <= 64
        and isinstance(payload.get("data"), dict)
        and occurred is not None
    ):
        raise _rejected(400, "not a Paddle event (event_id, event_type, occurred_at, data)")
    return {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": occurred,
        "payload": payload,
    }


def _rejected(status_code: int, reason: str) -> WebhookRejected:
    # The reason only: never the body or the signature.
    logger.warning("paddle webhook rejected", extra={"reason": reason, "status_code": status_code})
    return WebhookRejected(status_code, reason)


# ---------- Processing (worker) ----------


def process_event(*, event_pk: int) -> None:
    """Apply one stored event exactly once; a second run finds it processed and returns."""
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().filter(pk=event_pk).first()
        if event is None or event.processed_at is not None:
            return
        try:
            with transaction.atomic():
                outcome = _dispatch(event)
        except LeftForAdmin as error:
            _record_failure(event, str(error), retry=False)
            return
        except UnknownAccount as error:
            _record_failure(event, str(error))
            return
        except Exception as error:
            # The traceback goes to the event (admins see it), not to the log with the payload.
            _record_failure(event, traceback.format_exc(), error_type=type(error).__name__)
            return
        event.processed_at = timezone.now()
        event.outcome = outcome[:200]
        event.error = ""
        event.payload = accounting_record(event.payload)
        event.save(update_fields=["processed_at", "outcome", "error", "account", "payload"])
    logger.info(
        "paddle event processed",
        extra={
            "event_id": event.event_id,
            "event_type": event.event_type,
            "outcome": event.outcome,
        },
    )


def _record_failure(
    event: WebhookEvent, error: str, *, error_type: str = "", retry: bool = True
) -> None:
    """Keep the reason and schedule another try: an event that arrived before the one that
    introduces its account, or met a passing fault, usually succeeds later by itself. The
    payload is cut down as for a processed event; what processing reads is kept."""
    event.error = error
    event.failures += 1
    delays = RETRY_DELAYS[event.failures - 1 :] if retry else ()
    event.retry_at = timezone.now() + delays[0] if delays else None
    event.payload = accounting_record(event.payload)
    event.save(update_fields=["error", "failures", "retry_at", "account", "payload"])
    logger.warning(
        "paddle event not processed",
        extra={
            "event_id": event.event_id,
            "event_type": event.event_type,
            "failures": event.failures,
            "error": error_type or error[:200],
        },
    )


def _dispatch(event: WebhookEvent) -> str:
    data = event.payload["data"]
    if event.event_type in SUBSCRIPTION_EVENTS:
        return _apply_subscription_event(event, data)
    if event.event_type == "transaction.completed":
        return _record_invoice(event, data)
    if event.event_type == "transaction.payment_failed":
        return _payment_failed(event, data)
    return "ignored: ReqRun does not act on this event type"


def _account_for_subscription(
    event: WebhookEvent, state: paddle.SubscriptionState, data: dict[str, Any]
) -> Account:
    """The account of a known subscription; else the account of the ReqRun-created checkout
    transaction it came from (its `transaction_id`, or a transaction event that named it)."""
    known = Subscription.objects.filter(paddle_subscription_id=state.subscription_id).first()
    if known is not None:
        account = known.account
        _check_customer(event, account, state.customer_id, fallback=known.paddle_customer_id)
        return account
    transaction_id = data.get("transaction_id")
    if isinstance(transaction_id, str) and transaction_id:
        checkout = CheckoutTransaction.objects.filter(paddle_transaction_id=transaction_id).first()
        if checkout is None:
            raise LeftForAdmin(
                f"Refused: subscription {state.subscription_id} comes from transaction "
                f"{transaction_id}, which ReqRun did not create; nothing was changed."
            )
    else:
        checkout = CheckoutTransaction.objects.filter(
            paddle_subscription_id=state.subscription_id
        ).first()
    if checkout is None:
        raise UnknownAccount(
            f"No ReqRun account for this event: no checkout transaction ReqRun created names "
            f"subscription {state.subscription_id} (custom_data is not trusted)."
        )
    _check_customer(
        event, checkout.account, state.customer_id, fallback=checkout.paddle_customer_id
    )
    if not checkout.paddle_subscription_id:
        checkout.paddle_subscription_id = state.subscription_id
        checkout.save(update_fields=["paddle_subscription_id"])
    return checkout.account


def _account_for_transaction(event: WebhookEvent, data: dict[str, Any]) -> Account:
    """The account of the transaction's known subscription, else of the checkout transaction
    ReqRun created (which then learns its subscription); either way for its own customer."""
    subscription_id = data.get("subscription_id") or ""
    known = (
        Subscription.objects.filter(paddle_subscription_id=subscription_id).first()
        if subscription_id
        else None
    )
    customer_id = str(data.get("customer_id") or "")
    if known is not None:
        _check_customer(event, known.account, customer_id, fallback=known.paddle_customer_id)
        return known.account
    checkout = CheckoutTransaction.objects.filter(paddle_transaction_id=str(data["id"])).first()
    if checkout is None:
        raise UnknownAccount(
            f"No ReqRun account for this event: transaction {data['id']} was not created by "
            f"ReqRun and names no known subscription (custom_data is not trusted)."
        )
    _check_customer(event, checkout.account, customer_id, fallback=checkout.paddle_customer_id)
    if subscription_id and not checkout.paddle_subscription_id:
        checkout.paddle_subscription_id = subscription_id
        checkout.save(update_fields=["paddle_subscription_id"])
    return checkout.account


def _check_customer(
    event: WebhookEvent, account: Account, customer_id: str, *, fallback: str
) -> None:
    """The event's customer must be the one ReqRun created for the account (or, for accounts
    from before that, the one its subscription was bound to)."""
    event.account = account
    stored = (
        BillingCustomer.objects.filter(account=account)
        .values_list("paddle_customer_id", flat=True)
        .first()
    ) or fallback
    if stored and customer_id != stored:
        raise LeftForAdmin(
            f"Customer mismatch: the event's customer {customer_id or '(none)'} is not "
            f"{account.public_id}'s Paddle customer {stored}; nothing was changed."
        )


def _apply_subscription_event(event: WebhookEvent, data: dict[str, Any]) -> str:
    state = paddle.state_from_payload(data)
    account = _account_for_subscription(event, state, data)
    _, created = Subscription.objects.get_or_create(
        paddle_subscription_id=state.subscription_id,
        defaults={"account": account, "status": state.status},
    )
    subscription = Subscription.objects.select_for_update().get(
        paddle_subscription_id=state.subscription_id
    )
    last = subscription.last_event_occurred_at
    if last is not None and event.occurred_at < last:
        return "ignored: older than the last change recorded for this subscription"
    # A row made just now holds this event's status already: it was not past due before.
    was_past_due = not created and subscription.status == Subscription.Status.PAST_DUE
    services.apply_subscription_state(subscription=subscription, state=state)
    subscription.last_event_occurred_at = event.occurred_at
    subscription.save()
    if created and subscription.is_live:
        # New subscriptions of one account are bound one at a time (its row lock, after the
        # new row's, as `sync_account_plan` takes them), so of two checkouts paid in two
        # tabs the one bound first is kept, whichever order their events are processed in.
        Account.objects.select_for_update().filter(pk=account.pk).first()
        kept = subscription_billed_before(subscription)
        if kept is not None:
            services.cancel_duplicate_subscription(subscription=subscription, kept=kept)
            plan_code = services.sync_account_plan(account=account)
            return (
                f"canceled at once: {kept.paddle_subscription_id} already bills the account, "
                f"which stays on {plan_code}"
            )
    plan_code = services.sync_account_plan(account=subscription.account)
    if subscription.status == Subscription.Status.PAST_DUE and not was_past_due:
        _email_owners_on_commit(event)
    return f"applied: subscription {subscription.status}, account on {plan_code}"


def _record_invoice(event: WebhookEvent, data: dict[str, Any]) -> str:
    account = _account_for_transaction(event, data)
    totals = (data.get("details") or {}).get("totals") or {}
    Invoice.objects.update_or_create(
        paddle_transaction_id=str(data["id"]),
        defaults={
            "account": account,
            "paddle_subscription_id": data.get("subscription_id") or "",
            "invoice_number": data.get("invoice_number") or "",
            "amount_minor": int(totals.get("grand_total") or totals.get("total") or 0),
            "currency_code": str(data.get("currency_code") or totals.get("currency_code") or ""),
            "billed_at": aware_time(data.get("billed_at") or data.get("updated_at")),
        },
    )
    return "invoice recorded"


def _payment_failed(event: WebhookEvent, data: dict[str, Any]) -> str:
    _account_for_transaction(event, data)  # sets event.account, which the email goes to
    if CheckoutTransaction.objects.filter(paddle_transaction_id=str(data["id"])).exists():
        # A card declined in the checkout ReqRun created: the buyer sees it there, and there
        # is no subscription yet for Paddle to retry a payment of.
        return "checkout payment declined: shown to the buyer in checkout, no email"
    _email_owners_on_commit(event)
    return "owners told the payment failed"


def _email_owners_on_commit(event: WebhookEvent) -> None:
    """Once the event is applied, email the owners; a send the mail server refused is
    retried by a task (the event's id only), and never undoes or blocks the event."""
    from billing.tasks import email_owners_about_event  # the task module imports this one

    send_or_retry_on_commit(
        lambda: email_owners_about(event_pk=event.pk),
        task=email_owners_about_event,
        ids=(event.pk,),
    )


def email_owners_about(*, event_pk: int, owner_ids: list[int] | None = None) -> None:
    """Send the owners (those of `owner_ids`, for a retry) the email an applied event called
    for (past due, payment failed); raises MAIL_ERRORS when the mail server refuses it
    (`email_owners`)."""
    event = WebhookEvent.objects.select_related("account").get(pk=event_pk)
    data = event.payload["data"]
    if event.event_type == "transaction.payment_failed":
        email_owners(
            account=event.account,
            subject="Your payment failed",
            template="billing/email/payment_failed.txt",
            context={"transaction_id": data.get("id", "")},
            owner_ids=owner_ids,
        )
        return
    subscription = Subscription.objects.get(paddle_subscription_id=str(data["id"]))
    email_owners(
        account=subscription.account,
        subject="Your payment is past due",
        template="billing/email/past_due.txt",
        context={"subscription": subscription},
        owner_ids=owner_ids,
    )
