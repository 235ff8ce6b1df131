"""Paddle's view of an account: its Paddle customer, the checkout transactions ReqRun created,
subscriptions, the webhook events that drive them, invoices."""

from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Account
from projects.models import Plan

# A past-due subscription keeps its plan this long while Paddle retries the payment.
PAST_DUE_GRACE = timedelta(days=14)


class BillingCustomer(models.Model):
    """The Paddle customer ReqRun created for an account: one per account, never taken from a
    webhook or the browser. Checkout, subscriptions and portal sessions are bound to it."""

    account = models.OneToOneField(
        Account, on_delete=models.CASCADE, related_name="billing_customer"
    )
    paddle_customer_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.paddle_customer_id


class CheckoutTransaction(models.Model):
    """A Paddle transaction ReqRun created for checkout. A new subscription is attached to an
    account only through one of these (by the subscription's `transaction_id`, or by a
    transaction event naming the subscription)."""

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="checkout_transactions"
    )
    paddle_transaction_id = models.CharField(max_length=64, unique=True)
    paddle_customer_id = models.CharField(max_length=64)
    price_id = models.CharField(max_length=64)
    # Learnt from Paddle's events once the checkout is paid.
    paddle_subscription_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.paddle_transaction_id


class Subscription(models.Model):
    """A Paddle subscription as last reported by a webhook (or by Paddle's answer to our call)."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        TRIALING = "trialing", "Trialing"
        PAST_DUE = "past_due", "Past due"
        PAUSED = "paused", "Paused"
        CANCELED = "canceled", "Canceled"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="subscriptions")
    paddle_subscription_id = models.CharField(max_length=64, unique=True)
    paddle_customer_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices)
    plan = models.ForeignKey(
        Plan,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Empty when the price id maps to no plan (see PADDLE_PRICES).",
    )
    price_id = models.CharField(max_length=64, blank=True)
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    scheduled_change_action = models.CharField(max_length=20, blank=True)
    scheduled_change_effective_at = models.DateTimeField(null=True, blank=True)
    past_due_since = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    last_event_occurred_at = models.DateTimeField(
        null=True, blank=True, help_text="Events that occurred before this change nothing."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.paddle_subscription_id} ({self.status})"

    @property
    def cancel_scheduled(self) -> bool:
        return self.scheduled_change_action == "cancel" and self.status != self.Status.CANCELED

    @property
    def pause_scheduled(self) -> bool:
        return self.scheduled_change_action == "pause" and self.is_live

    @property
    def paused_or_pausing(self) -> bool:
        """Paused, or set to pause: "Resume" brings it back, so checkout must not sell another."""
        return self.status == self.Status.PAUSED or self.pause_scheduled

    @property
    def is_live(self) -> bool:
        """Still billed (possibly with a scheduled cancellation): checkout must not sell another."""
        return self.status in (self.Status.ACTIVE, self.Status.TRIALING, self.Status.PAST_DUE)

    @property
    def grace_ends_at(self) -> datetime | None:
        return self.past_due_since + PAST_DUE_GRACE if self.past_due_since else None

    @property
    def grace_ended(self) -> bool:
        """Past due beyond the grace period: this subscription no longer grants its plan."""
        return self.status == self.Status.PAST_DUE and not self.grants_access(timezone.now())

    def grants_access(self, now: datetime) -> bool:
        """Paid-plan limits apply while active or trialing, and while past due within grace.
        A scheduled cancellation keeps access: Paddle sends `canceled` when it takes effect."""
        if self.status in (self.Status.ACTIVE, self.Status.TRIALING):
            return True
        return self.status == self.Status.PAST_DUE and (
            self.grace_ends_at is None or now < self.grace_ends_at
        )


class WebhookEvent(models.Model):
    """A verified Paddle notification, stored once under Paddle's event id before processing;
    its payload is cut down to what accounting needs once processed, and the row is purged
    after `billing.event_retention.EVENT_RETENTION`."""

    event_id = models.CharField(max_length=64, unique=True)
    event_type = models.CharField(max_length=64, db_index=True)
    occurred_at = models.DateTimeField()
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    failures = models.PositiveSmallIntegerField(default=0)
    # When a failed event is tried again by the billing sweep; empty once retries run out.
    retry_at = models.DateTimeField(null=True, blank=True)
    account = models.ForeignKey(
        Account, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            models.Index(
                fields=["received_at"],
                name="webhook_event_unprocessed",
                condition=Q(processed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class Invoice(models.Model):
    """A completed Paddle transaction; the PDF stays at Paddle and is fetched on demand."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="invoices")
    paddle_transaction_id = models.CharField(max_length=64, unique=True)
    paddle_subscription_id = models.CharField(max_length=64, blank=True)
    invoice_number = models.CharField(max_length=64, blank=True)
    amount_minor = models.BigIntegerField(help_text="Grand total in the currency's minor unit.")
    currency_code = models.CharField(max_length=3)
    billed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-billed_at", "-created_at"]

    def __str__(self) -> str:
        return self.invoice_number or self.paddle_transaction_id

    @property
    def amount(self) -> str:
        """`29.00 USD`; Paddle's minor units have no decimals for JPY and KRW."""
        if self.currency_code in ("JPY", "KRW"):
            return f"{self.amount_minor} {self.currency_code}"
        return f"{self.amount_minor / 100:,.2f} {self.currency_code}"
