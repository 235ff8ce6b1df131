"""Paddle Billing payloads in their documented shapes (API v1), and Paddle's webhook signature.

The same subscription entity is what webhooks carry in `data` and what Paddle's API answers, so
the stand-in API server and the webhook tests share these builders."""

import hashlib
import hmac
import itertools
import json
import time
from datetime import UTC, datetime, timedelta

WEBHOOK_SECRET = "pdl_ntfset_01hv8xtest_signing_secret_for_tests"
PRICES = {"pro": "pri_01hv8pro0000000000000000", "team": "pri_01hv8team000000000000000"}
PRICE_CENTS = {PRICES["pro"]: "2900", PRICES["team"]: "19900"}
SUBSCRIPTION_ID = "sub_01hv8x29kz0t586xy6zn1a62ny"
# The stand-in API gives the first customer it creates this id (see paddle_stub).
CUSTOMER_ID = "ctm_01hv8wt8nffez4p2t6tx2ytzsf"
OTHER_CUSTOMER_ID = "ctm_01hv8someoneelse000000000"

_counter = itertools.count(1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> datetime:
    return datetime.now(UTC)


def subscription(
    *,
    account_id: str | None,
    status: str = "active",
    price_id: str = PRICES["pro"],
    subscription_id: str = SUBSCRIPTION_ID,
    customer_id: str = CUSTOMER_ID,
    period_start: datetime | None = None,
    scheduled_change: dict | None = None,
    canceled_at: datetime | None = None,
    paused_at: datetime | None = None,
    transaction_id: str | None = None,
) -> dict:
    """A subscription entity as Paddle sends it; `subscription.created` also names the
    transaction the subscription came from (`transaction_id`)."""
    start = period_start or now().replace(microsecond=0) - timedelta(days=3)
    end = start + timedelta(days=30)
    created = start.isoformat().replace("+00:00", "Z")
    live = status in ("active", "trialing", "past_due")
    entity = {
        "id": subscription_id,
        "status": status,
        "customer_id": customer_id,
        "address_id": "add_01hv8wt8pbmk1ty3zy5xxrqd1z",
        "business_id": None,
        "currency_code": "USD",
        "created_at": created,
        "updated_at": iso(now()),
        "started_at": created,
        "first_billed_at": created,
        "next_billed_at": iso(end) if live and not scheduled_change else None,
        "paused_at": iso(paused_at) if paused_at else None,
        "canceled_at": iso(canceled_at) if canceled_at else None,
        "discount": None,
        "collection_mode": "automatic",
        "billing_details": None,
        "current_billing_period": (
            {"starts_at": iso(start), "ends_at": iso(end)} if live else None
        ),
        "billing_cycle": {"frequency": 1, "interval": "month"},
        "scheduled_change": scheduled_change,
        "items": [_item(price_id, start, end if live else None)],
        "custom_data": {"account_id": account_id} if account_id else None,
        "management_urls": {
            "update_payment_method": "https://buyer-portal.paddle.com/subscriptions/update",
            "cancel": "https://buyer-portal.paddle.com/subscriptions/cancel",
        },
        "import_meta": None,
    }
    if transaction_id:
        entity["transaction_id"] = transaction_id
    return entity


def cancel_scheduled(entity: dict) -> dict:
    """The same subscription after a cancellation at the end of its billing period."""
    return {
        **entity,
        "next_billed_at": None,
        "scheduled_change": {
            "action": "cancel",
            "effective_at": entity["current_billing_period"]["ends_at"],
            "resume_at": None,
        },
    }


def canceled_now(entity: dict) -> dict:
    """The same subscription after a cancellation effective immediately."""
    return {
        **entity,
        "status": "canceled",
        "canceled_at": iso(now()),
        "next_billed_at": None,
        "paused_at": None,
        "scheduled_change": None,
    }


def _item(price_id: str, start: datetime, next_billed: datetime | None) -> dict:
    stamp = iso(start)
    return {
        "status": "active",
        "quantity": 1,
        "recurring": True,
        "created_at": stamp,
        "updated_at": stamp,
        "previously_billed_at": stamp,
        "next_billed_at": iso(next_billed) if next_billed else None,
        "trial_dates": None,
        "price": _price(price_id, stamp),
        "product": _product(stamp),
    }


def _price(price_id: str, stamp: str) -> dict:
    return {
        "id": price_id,
        "product_id": "pro_01hv8wr4gh5k7bbx9n2fzpmxyz",
        "type": "standard",
        "name": "Monthly",
        "description": "Monthly plan",
        "tax_mode": "account_setting",
        "billing_cycle": {"frequency": 1, "interval": "month"},
        "trial_period": None,
        "unit_price": {"amount": PRICE_CENTS.get(price_id, "2900"), "currency_code": "USD"},
        "unit_price_overrides": [],
        "custom_data": None,
        "quantity": {"minimum": 1, "maximum": 1},
        "status": "active",
        "created_at": stamp,
        "updated_at": stamp,
        "import_meta": None,
    }


def _product(stamp: str) -> dict:
    return {
        "id": "pro_01hv8wr4gh5k7bbx9n2fzpmxyz",
        "name": "ReqRun",
        "type": "standard",
        "tax_category": "saas",
        "description": None,
        "image_url": None,
        "custom_data": None,
        "status": "active",
        "created_at": stamp,
        "updated_at": stamp,
        "import_meta": None,
    }


def transaction(
    *,
    account_id: str | None,
    status: str = "completed",
    transaction_id: str = "txn_01hv8xcvbnm0000000000000001",
    subscription_id: str | None = SUBSCRIPTION_ID,
    grand_total: str = "2900",
    invoice_number: str | None = "325-10566",
    billed_at: datetime | None = None,
    customer_id: str = CUSTOMER_ID,
    price_id: str = PRICES["pro"],
) -> dict:
    """A transaction entity as Paddle sends it and as its API answers (complete enough for
    the SDK to read it)."""
    billed = iso(billed_at or now())
    return {
        "id": transaction_id,
        "status": status,
        "customer_id": customer_id,
        "address_id": "add_01hv8wt8pbmk1ty3zy5xxrqd1z",
        "business_id": None,
        "custom_data": {"account_id": account_id} if account_id else None,
        "origin": "web",
        "collection_mode": "automatic",
        "subscription_id": subscription_id,
        "invoice_id": "inv_01hv8xcvbnm0000000000000001" if invoice_number else None,
        "invoice_number": invoice_number,
        "billing_details": None,
        "billing_period": None,
        "currency_code": "USD",
        "discount_id": None,
        "created_at": billed,
        "updated_at": billed,
        "billed_at": billed,
        "items": [
            {
                "price_id": price_id,
                "price": _price(price_id, billed),
                "quantity": 1,
                "proration": None,
            }
        ],
        "details": {
            "tax_rates_used": [],
            "line_items": [],
            "totals": {
                "subtotal": grand_total,
                "discount": "0",
                "tax": "0",
                "total": grand_total,
                "credit": "0",
                "balance": "0",
                "grand_total": grand_total,
                "fee": None,
                "earnings": None,
                "currency_code": "USD",
                "credit_to_balance": "0",
                "grand_total_tax": "0",
            },
        },
        "payments": [],
        "checkout": {"url": "https://reqrun.example/pricing?_ptxn=" + transaction_id},
    }


def customer(*, customer_id: str, email: str, account_id: str | None = None) -> dict:
    """A customer entity as Paddle's API answers and its `customer.*` events carry."""
    stamp = iso(now())
    return {
        "id": customer_id,
        "name": None,
        "email": email,
        "marketing_consent": False,
        "status": "active",
        "locale": "en",
        "custom_data": {"account_id": account_id} if account_id else None,
        "created_at": stamp,
        "updated_at": stamp,
        "import_meta": None,
    }


def event(
    event_type: str, data: dict, *, occurred_at: datetime | None = None, event_id: str | None = None
) -> dict:
    number = next(_counter)
    return {
        "event_id": event_id or f"evt_01hv8test{number:016d}",
        "event_type": event_type,
        "occurred_at": iso(occurred_at or now()),
        "notification_id": f"ntf_01hv8test{number:016d}",
        "data": data,
    }


def sign(body: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """`Paddle-Signature: ts=…;h1=HMAC-SHA256(secret, "ts:body")`, exactly as Paddle signs."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return f"ts={ts};h1={digest}"


def encode(payload: dict) -> bytes:
    return json.dumps(payload).encode()
