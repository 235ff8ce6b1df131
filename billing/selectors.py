"""Reads for the pricing and billing pages, and for the sweeper."""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Account
from billing.models import Invoice, Subscription, WebhookEvent
from projects.limits import (
    accepted_requests,
    current_period_start,
    limits_for,
    next_period_start,
    quota_percent,
)
from projects.models import Plan

# A stored event still unprocessed after this long lost its task (Redis restart, worker kill).
LOST_EVENT_AFTER = timedelta(minutes=2)

LIMIT_ROWS = [
    ("projects", "Projects", ""),
    ("api_keys_per_project", "API keys per project", ""),
    ("upstreams_per_project", "Upstreams per project", ""),
    ("monthly_requests", "Accepted requests / month", ""),
    ("retention_days", "Request-record retention", " days"),
    ("pending_requests", "Pending queue cap", ""),
    ("concurrency", "Concurrent upstream calls", ""),
    ("requests_per_minute", "Rate limit (requests / minute)", ""),
    ("max_attempts", "Max attempts per request", ""),
    ("members", "Team members", ""),
]


@dataclass(frozen=True)
class PlanOffer:
    plan: Plan
    price_id: str

    @property
    def price(self) -> str:
        cents = self.plan.price_cents_monthly
        if cents is None or not self.plan.self_serve:
            return "Contact us"
        return f"${cents // 100:,}" if cents % 100 == 0 else f"${cents / 100:,.2f}"


@dataclass(frozen=True)
class Usage:
    used: int
    quota: int
    period_start: date
    period_end: date

    @property
    def percent(self) -> int:
        return quota_percent(used=self.used, quota=self.quota)


def purchasable_plan(code: str) -> tuple[Plan, str] | None:
    """The self-serve plan `code` names and its Paddle price, or None when it cannot be
    bought here: unknown (a NUL included, which PostgreSQL could not compare), arranged by
    an operator, or without a price."""
    plan = None if "\x00" in code else Plan.objects.filter(code=code, self_serve=True).first()
    price_id = price_id_for(plan) if plan else ""
    return (plan, price_id) if price_id else None


def price_id_for(plan: Plan) -> str:
    """PADDLE_PRICES (per environment) wins over the id stored on the plan in admin."""
    return settings.PADDLE_PRICES.get(plan.code) or plan.paddle_price_id


def plan_for_price(price_id: str) -> Plan | None:
    if not price_id:
        return None
    for code, configured in settings.PADDLE_PRICES.items():
        if configured == price_id:
            return Plan.objects.filter(code=code).first()
    return Plan.objects.filter(paddle_price_id=price_id).first()


def plan_offers() -> list[PlanOffer]:
    return [PlanOffer(plan=plan, price_id=price_id_for(plan)) for plan in Plan.objects.all()]


def limit_table(offers: list[PlanOffer]) -> list[tuple[str, list[str]]]:
    """Rows of the pricing table: a label and one formatted value per plan."""
    return [
        (label, [f"{getattr(offer.plan, field):,}{suffix}" for offer in offers])
        for field, label, suffix in LIMIT_ROWS
    ]


def current_subscription(account: Account) -> Subscription | None:
    """The subscription the billing page is about: the newest still billed, else the newest
    paused (it can resume, even by itself), else the newest."""
    subscriptions = list(
        account.subscriptions.select_related("plan").order_by("-created_at", "-pk")
    )
    return (
        next((s for s in subscriptions if s.is_live), None)
        or next((s for s in subscriptions if s.status == Subscription.Status.PAUSED), None)
        or next(iter(subscriptions), None)
    )


def subscription_billed_before(subscription: Subscription) -> Subscription | None:
    """Another subscription of the same account that Paddle still bills or can resume, the
    one bound first; the account keeps it, and `subscription` is one too many."""
    return (
        subscription.account.subscriptions.exclude(pk=subscription.pk)
        .filter(
            status__in=[
                Subscription.Status.ACTIVE,
                Subscription.Status.TRIALING,
                Subscription.Status.PAST_DUE,
                Subscription.Status.PAUSED,
            ]
        )
        .order_by("created_at", "pk")
        .first()
    )


def invoices_of(account: Account) -> QuerySet[Invoice]:
    return account.invoices.all()


def usage_of(account: Account) -> Usage:
    period = current_period_start()
    return Usage(
        used=accepted_requests(account, period),
        quota=limits_for(account).monthly_requests,
        period_start=period,
        period_end=next_period_start(period),
    )


def webhook_event_ids_to_retry(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Unprocessed events due another try: never tried for a while (their task was lost),
    or failed and due by their retry schedule. Failures past the schedule wait for admin."""
    now = now or timezone.now()
    return list(
        WebhookEvent.objects.filter(
            Q(error="", received_at__lt=now - LOST_EVENT_AFTER) | Q(retry_at__lte=now),
            processed_at__isnull=True,
        )
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
