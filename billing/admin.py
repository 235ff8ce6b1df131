from django.contrib import admin, messages
from django.db import transaction

from billing.models import (
    BillingCustomer,
    CheckoutTransaction,
    Invoice,
    Subscription,
    WebhookEvent,
)
from billing.tasks import process_webhook_event
from core.admin import KeptRecord


class PaddleRecordAdmin(KeptRecord, admin.ModelAdmin):
    """Rows that copy Paddle, or bind its objects to an account, are read here: Paddle is
    the source of truth, so they change there (and through its webhooks), never here. None
    is added or deleted either: an account without its subscription row could buy a second
    one, without its customer or checkout transaction Paddle's events no longer bind, and
    an event whose row is gone would be processed again when Paddle redelivers it (its
    stored event_id is how a redelivery is known), emailing the owners about one failed
    payment twice, say. The billing sweep purges events long after Paddle stops
    redelivering them. Nor are they saved: a save writes the whole row back as the request
    read it, undoing a webhook's write landing meanwhile (a subscription's new status)."""


@admin.register(Subscription)
class SubscriptionAdmin(PaddleRecordAdmin):
    list_display = [
        "paddle_subscription_id",
        "account",
        "status",
        "plan",
        "current_period_end",
        "scheduled_change_action",
        "updated_at",
    ]
    list_filter = ["status", "plan", "scheduled_change_action"]
    search_fields = [
        "paddle_subscription_id",
        "paddle_customer_id",
        "account__public_id",
        "account__name",
    ]
    list_select_related = ["account", "plan"]


class ProcessingFilter(admin.SimpleListFilter):
    title = "processing"
    parameter_name = "processing"

    def lookups(self, request, model_admin):
        return [
            ("failed", "Failed (includes unknown accounts)"),
            ("admin", "Left for an admin (refused, mismatched or out of retries)"),
            ("no_account", "No matching account"),
            ("pending", "Not processed yet"),
            ("done", "Processed"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "failed":
            return queryset.filter(processed_at__isnull=True).exclude(error="")
        if self.value() == "admin":
            return queryset.filter(processed_at__isnull=True, retry_at__isnull=True).exclude(
                error=""
            )
        if self.value() == "no_account":
            return queryset.filter(account__isnull=True)
        if self.value() == "pending":
            return queryset.filter(processed_at__isnull=True, error="")
        if self.value() == "done":
            return queryset.filter(processed_at__isnull=False)
        return queryset


@admin.register(WebhookEvent)
class WebhookEventAdmin(PaddleRecordAdmin):
    list_display = [
        "event_id",
        "event_type",
        "occurred_at",
        "received_at",
        "processed_at",
        "account",
        "outcome",
        "reason",
    ]
    list_filter = [ProcessingFilter, "event_type"]
    search_fields = ["event_id", "event_type", "account__public_id"]
    list_select_related = ["account"]
    date_hierarchy = "received_at"
    actions = ["reprocess"]

    def get_fields(self, request, obj=None):
        fields = [
            "event_id",
            "event_type",
            "occurred_at",
            "received_at",
            "processed_at",
            "account",
            "outcome",
            "error",
            "failures",
            "retry_at",
        ]
        # Unprocessed payloads carry customers' names, emails and addresses.
        return [*fields, "payload"] if request.user.is_superuser else fields

    @admin.display(description="error")
    def reason(self, event: WebhookEvent) -> str:
        """Our own reasons are one line; for a traceback its last line names the exception."""
        lines = event.error.strip().splitlines()
        return lines[-1][:160] if lines else ""

    def has_reprocess_permission(self, request) -> bool:
        return request.user.has_perm("billing.change_webhookevent")

    @admin.action(description="Reprocess selected events", permissions=["reprocess"])
    def reprocess(self, request, queryset):
        event_pks = list(queryset.values_list("pk", flat=True))
        with transaction.atomic():
            WebhookEvent.objects.filter(pk__in=event_pks).update(
                processed_at=None, error="", outcome="", failures=0, retry_at=None
            )
            for event_pk in event_pks:
                transaction.on_commit(lambda pk=event_pk: process_webhook_event.delay(pk))
        self.message_user(
            request, f"{len(event_pks)} event(s) queued for processing.", messages.SUCCESS
        )


@admin.register(Invoice)
class InvoiceAdmin(PaddleRecordAdmin):
    list_display = ["paddle_transaction_id", "invoice_number", "account", "amount", "billed_at"]
    search_fields = [
        "paddle_transaction_id",
        "invoice_number",
        "paddle_subscription_id",
        "account__public_id",
    ]
    list_select_related = ["account"]


@admin.register(BillingCustomer)
class BillingCustomerAdmin(PaddleRecordAdmin):
    list_display = ["paddle_customer_id", "account", "created_at"]
    search_fields = ["paddle_customer_id", "account__public_id", "account__name"]
    list_select_related = ["account"]


@admin.register(CheckoutTransaction)
class CheckoutTransactionAdmin(PaddleRecordAdmin):
    list_display = [
        "paddle_transaction_id",
        "account",
        "paddle_customer_id",
        "price_id",
        "paddle_subscription_id",
        "created_at",
    ]
    search_fields = [
        "paddle_transaction_id",
        "paddle_customer_id",
        "paddle_subscription_id",
        "account__public_id",
    ]
    list_select_related = ["account"]
