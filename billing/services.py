"""State changes for billing: the plan an account's subscriptions pay for, the owner's actions
on the billing page (through Paddle's API), usage notices and billing emails."""

import logging
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from django.db import transaction
from django.db.models import Case, DateTimeField, F, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.emails import send_or_retry, send_or_retry_on_commit
from accounts.models import Account, User
from accounts.services import email_owners, record_audit_event
from billing import paddle
from billing.models import PAST_DUE_GRACE, BillingCustomer, Invoice, Subscription
from billing.paddle import PaddleError, SubscriptionState
from billing.selectors import plan_for_price, purchasable_plan
from projects.limits import (
    DEFAULT_PLAN_CODE,
    current_period_start,
    next_period_start,
    plan_state_of,
    quota_percent,
    set_plan,
)
from projects.models import MonthlyUsage, Plan

logger = logging.getLogger(__name__)


class BillingError(Exception):
    """An action the billing page cannot take; the message says why, nothing was changed."""


# ---------- Subscription state and the account's plan ----------


def apply_subscription_state(*, subscription: Subscription, state: SubscriptionState) -> None:
    """Copy Paddle's view onto our row (the caller saves it)."""
    now = timezone.now()
    if state.status == Subscription.Status.PAST_DUE:
        subscription.past_due_since = subscription.past_due_since or now
    else:
        subscription.past_due_since = None
    subscription.status = state.status
    subscription.paddle_customer_id = state.customer_id or subscription.paddle_customer_id
    subscription.price_id = state.price_id
    subscription.plan = plan_for_price(state.price_id)
    subscription.current_period_start = state.current_period_start
    subscription.current_period_end = state.current_period_end
    subscription.scheduled_change_action = state.scheduled_change_action
    subscription.scheduled_change_effective_at = state.scheduled_change_effective_at
    subscription.canceled_at = state.canceled_at
    if subscription.plan is None:
        logger.warning(
            "paddle price maps to no plan",
            extra={"subscription_id": subscription.paddle_subscription_id},
        )


def entitled_plan_code(*, account: Account, now: datetime | None = None) -> str | None:
    """The best plan among the subscriptions still granting access, Free when none does;
    None when one of them pays for a price that maps to no plan (then we change nothing)."""
    now = now or timezone.now()
    granting = [
        subscription
        for subscription in account.subscriptions.select_related("plan")
        if subscription.grants_access(now)
    ]
    if any(subscription.plan is None for subscription in granting):
        return None
    if not granting:
        return DEFAULT_PLAN_CODE
    return max(granting, key=lambda subscription: subscription.plan.sort_order).plan.code


@transaction.atomic
def sync_account_plan(*, account: Account, actor: User | None = None) -> str:
    """Put the account on the plan its subscriptions pay for; limits apply at once and existing
    projects and keys are kept (the downgrade rule). Plans operators assign that cannot be
    bought (Enterprise) are never changed by billing. Returns the plan code now in force."""
    Account.objects.select_for_update().filter(pk=account.pk).first()
    current = plan_state_of(account).plan
    target = entitled_plan_code(account=account)
    if not current.self_serve or target is None or target == current.code:
        return current.code
    new = set_plan(account=account, plan_code=target, actor=actor).plan
    logger.info(
        "plan changed",
        extra={"account_id": account.public_id, "from_plan": current.code, "to_plan": new.code},
    )
    return new.code


def enforce_past_due_grace(*, now: datetime | None = None) -> int:
    """Accounts whose past-due grace ran out fall back to what they still pay for (often Free)."""
    now = now or timezone.now()
    account_ids = (
        Subscription.objects.filter(
            status=Subscription.Status.PAST_DUE, past_due_since__lt=now - PAST_DUE_GRACE
        )
        .values_list("account_id", flat=True)
        .distinct()
    )
    accounts = list(Account.objects.filter(pk__in=account_ids))
    for account in accounts:
        sync_account_plan(account=account)
    return len(accounts)


# ---------- The owner's actions (Paddle API first, then our copy) ----------


class Changed(NamedTuple):
    """The subscription after an owner's action. `already`: Paddle had made the change before
    (an earlier try Paddle accepted but whose answer ReqRun failed to record)."""

    subscription: Subscription
    already: bool


# What the owner can do about Paddle's refusal of a change, by Paddle's error code.
_ENDED = (
    "It has ended at Paddle: the billing page shows so once Paddle's notice arrives (usually "
    "within minutes), and you can then subscribe again from the pricing page."
)
_REFUSAL_ADVICE = {
    "subscription_locked_pending_changes": (
        "Paddle has another change scheduled for it: open the customer portal to see it, and "
        "try again once it is withdrawn or has taken effect."
    ),
    "subscription_locked_renewal": "Paddle is renewing it: try again in half an hour.",
    "subscription_locked_processing": "Paddle is processing it: try again in half an hour.",
    "subscription_outstanding_transaction": (
        "A payment is outstanding: update your payment method in the customer portal, then "
        "try again."
    ),
    "subscription_is_canceled_action_invalid": _ENDED,
    "subscription_update_when_canceled": _ENDED,
}
_OTHER_REFUSAL = (
    "Open the customer portal to see the subscription as Paddle has it; if this keeps "
    "happening, email support@reqrun.com."
)


def _change_at_paddle(
    *,
    subscription: Subscription,
    change: Callable[[], SubscriptionState],
    made: Callable[[SubscriptionState], bool],
) -> tuple[SubscriptionState, bool]:
    """Ask Paddle for a change of `subscription`: Paddle's answer, and whether the change was
    already made.

    A try that Paddle accepted but whose answer we failed to record (the database out right
    after Paddle answered, the process killed) leaves our copy stale, and Paddle refuses the
    same change sent again (a second cancel, resuming a subscription no longer paused). So on
    a refusal we read the subscription from Paddle: when it already is what was asked for
    (`made`), that is the answer; otherwise the refusal stands, saying what the owner can do."""
    try:
        return change(), False
    except PaddleError as refusal:
        if not refusal.error_code:  # unreachable or unreadable, not refused: nothing to read
            raise
        try:
            state = paddle.get_subscription(subscription_id=subscription.paddle_subscription_id)
        except PaddleError:
            state = None
        if state is None or not made(state):
            advice = _REFUSAL_ADVICE.get(refusal.error_code, _OTHER_REFUSAL)
            raise PaddleError(
                f"{str(refusal).rstrip('.')}. {advice}", error_code=refusal.error_code
            ) from refusal
        logger.info(
            "paddle change already made",
            extra={
                "account_id": subscription.account.public_id,
                "subscription_id": subscription.paddle_subscription_id,
                "error_code": refusal.error_code,
            },
        )
        return state, True


def _is_live(state: SubscriptionState) -> bool:
    return state.status in (
        Subscription.Status.ACTIVE,
        Subscription.Status.TRIALING,
        Subscription.Status.PAST_DUE,
    )


def _record_paddle_answer(
    *,
    subscription: Subscription,
    state: SubscriptionState,
    actor: User | None,
    action: str,
    ip_address: str | None,
) -> Subscription:
    """Paddle's answer is the subscription as of its `updated_at` (Paddle's clock, as events'
    `occurred_at`): events that occurred before it describe an older state and change nothing,
    so a late or retried one cannot undo the action."""
    answered_at = state.updated_at or timezone.now()
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        apply_subscription_state(subscription=locked, state=state)
        last = locked.last_event_occurred_at
        locked.last_event_occurred_at = max(last, answered_at) if last else answered_at
        locked.save()
        record_audit_event(
            account=locked.account,
            actor=actor,
            action=action,
            target=locked.paddle_subscription_id,
            ip_address=ip_address,
        )
        sync_account_plan(account=locked.account, actor=actor)
    return locked


def cancel_subscription(
    *,
    subscription: Subscription | None,
    actor: User,
    ip_address: str | None = None,
    at_once: bool = False,
) -> Changed:
    """Cancel at the end of the billing period: the plan stays until then.

    A paused subscription ends at once, as Paddle ends one: no period runs while it is
    paused, and the account is already on Free. `at_once` is for an account being deleted:
    nothing is left to keep a plan for, and a paused or already-ending subscription is ended
    too (a paused one could resume by itself). No refund either way (Refund Policy).
    """
    if subscription is not None and subscription.status == Subscription.Status.PAUSED:
        at_once = True
    if at_once:
        if subscription is None or subscription.status == Subscription.Status.CANCELED:
            raise BillingError("This subscription has already ended.")
    elif subscription is None or not subscription.is_live:
        raise BillingError("There is no active subscription to cancel.")
    elif subscription.cancel_scheduled:
        raise BillingError("This subscription is already set to end.")
    state, already = _change_at_paddle(
        subscription=subscription,
        change=lambda: paddle.cancel(
            subscription_id=subscription.paddle_subscription_id, at_once=at_once
        ),
        made=_ended if at_once else _ended_or_ending,
    )
    recorded = _record_paddle_answer(
        subscription=subscription,
        state=state,
        actor=actor,
        action="subscription_canceled" if at_once else "subscription_cancel_scheduled",
        ip_address=ip_address,
    )
    return Changed(recorded, already)


def _ended(state: SubscriptionState) -> bool:
    return state.status == Subscription.Status.CANCELED


def _ended_or_ending(state: SubscriptionState) -> bool:
    return _ended(state) or state.scheduled_change_action == "cancel"


def cancel_duplicate_subscription(
    *, subscription: Subscription, kept: Subscription
) -> Subscription:
    """End at once a subscription bound to an account that already pays for `kept` (two
    checkouts opened in two tabs, both paid), and tell the owners (an email the mail server
    refuses is retried by a task). Paddle's error propagates: the webhook event that bound it
    is then retried, so the cancellation is never lost."""
    state, _ = _change_at_paddle(
        subscription=subscription,
        change=lambda: paddle.cancel(
            subscription_id=subscription.paddle_subscription_id, at_once=True
        ),
        made=_ended,
    )
    canceled = _record_paddle_answer(
        subscription=subscription,
        state=state,
        actor=None,
        action="duplicate_subscription_canceled",
        ip_address=None,
    )
    logger.info(
        "duplicate subscription canceled",
        extra={
            "account_id": canceled.account.public_id,
            "subscription_id": canceled.paddle_subscription_id,
            "kept_subscription_id": kept.paddle_subscription_id,
        },
    )
    from billing import tasks  # the task module imports this one

    send_or_retry_on_commit(
        lambda: email_owners_about_duplicate(canceled_pk=canceled.pk, kept_pk=kept.pk),
        task=tasks.email_owners_about_duplicate,
        ids=(canceled.pk, kept.pk),
    )
    return canceled


def email_owners_about_duplicate(
    *, canceled_pk: int, kept_pk: int, owner_ids: list[int] | None = None
) -> None:
    """Tell the owners (those of `owner_ids`, for a retry) a second subscription was canceled
    at once (`cancel_duplicate_subscription`); raises MAIL_ERRORS when the mail server
    refuses it (`email_owners`)."""
    subscriptions = Subscription.objects.select_related("account", "plan").in_bulk(
        [canceled_pk, kept_pk]
    )
    if len(subscriptions) < 2:  # gone with their account: nobody left to tell
        return
    canceled, kept = subscriptions[canceled_pk], subscriptions[kept_pk]
    email_owners(
        account=canceled.account,
        subject="A second subscription was canceled",
        template="billing/email/duplicate_subscription_canceled.txt",
        context={"canceled": canceled, "kept": kept},
        owner_ids=owner_ids,
    )


def resume_subscription(
    *, subscription: Subscription | None, actor: User, ip_address: str | None = None
) -> Changed:
    """Withdraw a scheduled cancellation or pause, or resume a paused subscription."""
    if subscription is not None and (subscription.cancel_scheduled or subscription.pause_scheduled):
        call = paddle.remove_scheduled_change
    elif subscription is not None and subscription.status == Subscription.Status.PAUSED:
        call = paddle.resume_paused
    else:
        raise BillingError("There is no cancellation or pause to undo.")
    state, already = _change_at_paddle(
        subscription=subscription,
        change=lambda: call(subscription_id=subscription.paddle_subscription_id),
        made=lambda state: _is_live(state) and not state.scheduled_change_action,
    )
    recorded = _record_paddle_answer(
        subscription=subscription,
        state=state,
        actor=actor,
        action="subscription_resumed",
        ip_address=ip_address,
    )
    return Changed(recorded, already)


def change_plan(
    *,
    subscription: Subscription | None,
    plan_code: str,
    actor: User,
    ip_address: str | None = None,
) -> Changed:
    """Move a live subscription to another self-serve plan's price."""
    offer = purchasable_plan(plan_code)
    if offer is None:
        raise BillingError("That plan cannot be bought here.")
    plan, price_id = offer
    if subscription is not None and subscription.paused_or_pausing:
        raise BillingError("Resume your subscription before changing its plan.")
    if subscription is None or not subscription.is_live:
        raise BillingError("Subscribe from the pricing page first.")
    if subscription.cancel_scheduled:
        raise BillingError("Keep your subscription before changing its plan.")
    if subscription.plan_id == plan.pk and subscription.grace_ended:
        raise BillingError(
            f"The payment for {plan.name} is past due: update your payment method to return "
            f"to {plan.name}."
        )
    if subscription.plan_id == plan.pk:
        raise BillingError(f"You are already on {plan.name}.")
    if subscription.status == Subscription.Status.PAST_DUE:
        # Paddle refuses to change a subscription with an outstanding payment, and an
        # upgrade would charge the failing payment method at once.
        raise BillingError(
            "Your payment is past due: update your payment method before changing plans."
        )
    current_order = subscription.plan.sort_order if subscription.plan else -1
    state, already = _change_at_paddle(
        subscription=subscription,
        change=lambda: paddle.change_price(
            subscription_id=subscription.paddle_subscription_id,
            price_id=price_id,
            upgrade=plan.sort_order > current_order,
        ),
        made=lambda state: _is_live(state) and state.price_id == price_id,
    )
    recorded = _record_paddle_answer(
        subscription=subscription,
        state=state,
        actor=actor,
        action="subscription_plan_changed",
        ip_address=ip_address,
    )
    return Changed(recorded, already)


def customer_portal_url(*, account: Account) -> str:
    """Only for the customer ReqRun created for this account, never one a webhook named."""
    customer = BillingCustomer.objects.filter(account=account).first()
    if customer is None:
        raise BillingError("There is no Paddle customer for this account yet.")
    subscription_ids = list(
        account.subscriptions.filter(
            paddle_customer_id=customer.paddle_customer_id,
            status__in=[
                Subscription.Status.ACTIVE,
                Subscription.Status.TRIALING,
                Subscription.Status.PAST_DUE,
                Subscription.Status.PAUSED,
            ],
        ).values_list("paddle_subscription_id", flat=True)
    )
    return paddle.customer_portal_url(
        customer_id=customer.paddle_customer_id, subscription_ids=subscription_ids
    )


def invoice_pdf_url(*, invoice: Invoice) -> str:
    return paddle.invoice_pdf_url(transaction_id=invoice.paddle_transaction_id)


# ---------- Emails ----------


def _sent_for(quota: int | F) -> Q:
    """The one rule for usage notices: a month's notices count as sent only for the quota they
    were sent for (`notified_quota`; empty on rows from before it was recorded, which count
    for the quota in force). After a plan change, either way, the new quota's thresholds
    notify again."""
    return Q(notified_quota__isnull=True) | Q(notified_quota=quota)


def _not_sent(notice: str, quota: int | F) -> Q:
    return Q(**{f"{notice}__isnull": True}) | ~_sent_for(quota)


def _kept_if_sent_for(quota: int, notice: str) -> Case:
    """The notice's time when it was sent for `quota`, else empty."""
    return Case(When(_sent_for(quota), then=F(notice)), default=None, output_field=DateTimeField())


def send_usage_notices(*, now: datetime | None = None) -> int:
    """Email owners at 80 % and 100 % of the monthly quota, once each per period and quota;
    how many notices were claimed.

    Each notice is claimed with one conditional UPDATE, then sent: two scanners never both
    send it. Owners the mail server refused (not for good) get it from a task's retry, and
    the owners already reached do not get it again (`send_or_retry`)."""
    now = now or timezone.now()
    period = current_period_start(now.date())
    free_quota = Plan.objects.filter(code=DEFAULT_PLAN_CODE).values("monthly_requests")[:1]
    rows = (
        MonthlyUsage.objects.with_accepted()
        .filter(period_start=period)
        .annotate(
            quota=Coalesce(
                "account__plan_state__monthly_requests",
                "account__plan_state__plan__monthly_requests",
                Subquery(free_quota),
            )
        )
        .alias(used_percent=F("accepted_requests") * 100)
        .filter(quota__gt=0)
        .filter(
            Q(used_percent__gte=F("quota") * 80) & _not_sent("notified_80_at", F("quota"))
            | Q(accepted_requests__gte=F("quota")) & _not_sent("notified_100_at", F("quota"))
        )
    )
    return sum(_claim_and_send_usage_notice(row=row, now=now) for row in rows)


def _claim_and_send_usage_notice(*, row: MonthlyUsage, now: datetime) -> int:
    full = row.accepted_requests >= row.quota
    usage = MonthlyUsage.objects.filter(pk=row.pk)
    if full:
        # Reaching 100 % straight away also settles the 80 % notice: one email, not two.
        claimed = usage.filter(_not_sent("notified_100_at", row.quota)).update(
            notified_100_at=now,
            notified_80_at=Coalesce(_kept_if_sent_for(row.quota, "notified_80_at"), Value(now)),
            notified_quota=row.quota,
        )
    else:
        # Sent for another quota, the 100 % notice is due again at this one's 100 %.
        claimed = usage.filter(_not_sent("notified_80_at", row.quota)).update(
            notified_80_at=now,
            notified_100_at=_kept_if_sent_for(row.quota, "notified_100_at"),
            notified_quota=row.quota,
        )
    if not claimed:
        return 0
    from billing import tasks  # the task module imports this one

    # Sent after the claim is committed, not inside it: the row's lock would hold back every
    # request the account's API keys send (each counts on this row) for as long as the mail
    # server takes. The retry is given the two numbers the email states, so it says the same.
    send_or_retry(
        lambda: email_owners_about_usage(
            usage_pk=row.pk, used=row.accepted_requests, quota=row.quota
        ),
        task=tasks.email_owners_about_usage,
        ids=(row.pk, row.accepted_requests, row.quota),
    )
    return 1


def email_owners_about_usage(
    *, usage_pk: int, used: int, quota: int, owner_ids: list[int] | None = None
) -> None:
    """Tell the owners (those of `owner_ids`, for a retry) that the account has used `used`
    of its monthly `quota` (80 % of it, or all); raises MAIL_ERRORS when the mail server
    refuses it (`email_owners`). Nothing if the account is gone."""
    row = MonthlyUsage.objects.select_related("account").filter(pk=usage_pk).first()
    if row is None:  # gone with its account: nobody left to tell
        return
    full = used >= quota
    email_owners(
        account=row.account,
        subject="You have used all of this month's requests"
        if full
        else "You have used 80% of this month's requests",
        template="billing/email/usage_notice.txt",
        context={
            "used": used,
            "quota": quota,
            "full": full,
            "percent": quota_percent(used=used, quota=quota),
            "resets_on": next_period_start(row.period_start),
        },
        owner_ids=owner_ids,
    )
