"""What ReqRun keeps of a Paddle event: once processed, only what accounting needs (ids, type,
times, amounts and currency, status); and the scheduled purge of old events."""

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from billing.models import WebhookEvent
from billing.retention_policy import PADDLE_EVENT_RETENTION_DAYS

# The one number lives in retention_policy (the Privacy Policy and docs/billing.md state it);
# the billing sweep deletes events received longer ago than this.
EVENT_RETENTION = timedelta(days=PADDLE_EVENT_RETENTION_DAYS)
PURGE_BATCH = 1000

ENVELOPE_FIELDS = ("event_id", "event_type", "occurred_at", "notification_id")
# Subscription and transaction fields that are ids, times, status, money or the plan: never
# names, emails, addresses, business or payment-method details.
DATA_FIELDS = (
    "id",
    "status",
    "customer_id",
    "subscription_id",
    "transaction_id",
    "invoice_id",
    "invoice_number",
    "origin",
    "collection_mode",
    "currency_code",
    "created_at",
    "updated_at",
    "billed_at",
    "started_at",
    "first_billed_at",
    "next_billed_at",
    "paused_at",
    "canceled_at",
    "current_billing_period",
    "billing_period",
    "billing_cycle",
    "scheduled_change",
)
TOTAL_FIELDS = (
    "subtotal",
    "discount",
    "tax",
    "total",
    "credit",
    "balance",
    "grand_total",
    "fee",
    "earnings",
    "currency_code",
)


def accounting_record(payload: Any) -> dict[str, Any]:
    """The event cut down to the fields processing and accounting read. Processing the cut
    version again gives the same result, so an admin's "Reprocess" still works."""
    if not isinstance(payload, dict):
        return {}
    record = {field: payload[field] for field in ENVELOPE_FIELDS if field in payload}
    data = payload.get("data")
    if isinstance(data, dict):
        record["data"] = _data_record(data)
    return record


def _data_record(data: dict[str, Any]) -> dict[str, Any]:
    record = {field: data[field] for field in DATA_FIELDS if field in data}
    custom = data.get("custom_data")
    account_id = custom.get("account_id") if isinstance(custom, dict) else None
    if "custom_data" in data:
        record["custom_data"] = {"account_id": account_id} if isinstance(account_id, str) else None
    if isinstance(data.get("items"), list):
        record["items"] = [_item_record(item) for item in data["items"]]
    totals = (
        (data.get("details") or {}).get("totals") if isinstance(data.get("details"), dict) else None
    )
    if isinstance(totals, dict):
        record["details"] = {
            "totals": {field: totals[field] for field in TOTAL_FIELDS if field in totals}
        }
    return record


def _item_record(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {}
    record = {field: item[field] for field in ("price_id", "quantity", "status") if field in item}
    price = item.get("price")
    if isinstance(price, dict):
        record["price"] = {
            field: price[field] for field in ("id", "product_id", "unit_price") if field in price
        }
    return record


def purge_old_events(*, now: datetime | None = None) -> int:
    """Delete events received more than EVENT_RETENTION ago, in batches; returns how many.
    Subscriptions keep the time of the last event applied, so ordering survives the purge."""
    cutoff = (now or timezone.now()) - EVENT_RETENTION
    deleted = 0
    while True:
        batch = list(
            WebhookEvent.objects.filter(received_at__lt=cutoff).values_list("pk", flat=True)[
                :PURGE_BATCH
            ]
        )
        if not batch:
            return deleted
        deleted += WebhookEvent.objects.filter(pk__in=batch).delete()[0]
