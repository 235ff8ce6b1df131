"""Pricing, the dashboard billing page and its owner-only actions, and Paddle's webhook.

Members and admins see the billing page read-only (plan, status, dates, usage); invoices and
every action are for owners, and answer 404 to anyone else."""

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.dateformat import format as format_date
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts.access import Need, client_ip, member_view
from accounts.models import Membership
from accounts.selectors import current_membership
from billing import checkout, paddle, services, webhooks
from billing.models import Subscription
from billing.paddle import PaddleError
from billing.selectors import (
    current_subscription,
    invoices_of,
    limit_table,
    plan_offers,
    usage_of,
)
from billing.services import BillingError, Changed
from projects.limits import limits_for, plan_state_of


def _plans_context(request: HttpRequest, membership: Membership | None) -> dict:
    """What the plan cards need: offers, the current plan, and Paddle.js checkout settings
    when this viewer can buy (an owner with billing configured and no live, paused or pausing
    subscription: one that can resume is resumed, not bought again)."""
    offers = plan_offers()
    subscription = current_subscription(membership.account) if membership else None
    is_owner = bool(membership and membership.is_owner)
    plan = plan_state_of(membership.account).plan if membership else None
    live = subscription if subscription and subscription.is_live else None
    paused = subscription if subscription and subscription.paused_or_pausing else None
    can_checkout = (
        is_owner
        and live is None
        and paused is None
        and plan.self_serve
        and paddle.is_configured()
        and any(offer.price_id for offer in offers)
    )
    context = {
        "offers": offers,
        "configured": paddle.is_configured(),
        "is_owner": is_owner,
        "subscription": subscription,
        "live_subscription": live,
        "paused_subscription": paused,
        "current_plan_code": plan.code if plan else None,
        "operator_plan": bool(plan and not plan.self_serve),
        "can_checkout": can_checkout,
    }
    if can_checkout:
        # No account or customer here: the server creates the transaction (see `start_checkout`).
        context["checkout_config"] = {
            "token": settings.PADDLE_CLIENT_TOKEN,
            "environment": paddle.environment(),
            "checkoutUrl": reverse("billing-checkout"),
            "csrfToken": get_token(request),
            "successUrl": request.build_absolute_uri(reverse("billing")) + "?checkout=done",
        }
    return context


def pricing(request: HttpRequest) -> HttpResponse:
    context = _plans_context(request, current_membership(request))
    context["limit_rows"] = limit_table(context["offers"])
    return render(request, "pages/pricing.html", context)


@member_view()
def billing(request: HttpRequest, membership: Membership) -> HttpResponse:
    account = membership.account
    context = _plans_context(request, membership)
    context.update(
        limits=limits_for(account),
        usage=usage_of(account),
        invoices=invoices_of(account) if membership.is_owner else None,
        checkout_done=request.GET.get("checkout") == "done",
    )
    return render(request, "billing/billing.html", context)


def owner_only(view: Callable) -> Callable:
    """Signed in, owner of the current account; other members get a 404 (`member_view` lets
    every role through so that the refusal is this one), and a user without an account is
    sent to start one."""

    @member_view(write=Need.READ)
    @wraps(view)
    def wrapper(request: HttpRequest, membership: Membership, **kwargs) -> HttpResponse:
        if not membership.is_owner:
            raise Http404("Only owners manage billing.")
        return view(request, membership, **kwargs)

    return wrapper


def _until(subscription: Subscription) -> str:
    end = subscription.scheduled_change_effective_at or subscription.current_period_end
    return format_date(end, "F j, Y") if end else "the end of the billing period"


def _change_subscription(
    request: HttpRequest,
    membership: Membership,
    service: Callable[..., Changed],
    success: Callable[[Subscription, bool], str],
    **fields,
) -> HttpResponse:
    """Run one owner action on the current subscription; a refusal (ours or Paddle's) is shown
    as a message and nothing changed. The success message says so when Paddle had already
    made the change (`Changed.already`)."""
    try:
        changed = service(
            subscription=current_subscription(membership.account),
            actor=request.user,
            ip_address=client_ip(request),
            **fields,
        )
    except (BillingError, PaddleError) as error:
        messages.error(request, str(error))
    else:
        messages.success(request, success(*changed))
    return redirect("billing")


def _plan_name(subscription: Subscription) -> str:
    return subscription.plan.name if subscription.plan else "your plan"


def _canceled_message(subscription: Subscription, already: bool) -> str:
    if subscription.status == Subscription.Status.CANCELED and not already:
        # Only a paused subscription ends at once here (`cancel_subscription`).
        return "Your paused subscription has ended; it will not resume or bill again."
    if subscription.status == Subscription.Status.CANCELED:
        return "Your subscription has already ended."
    stays = f"{_plan_name(subscription)} stays active until {_until(subscription)}."
    if already:
        return f"Your subscription was already set to end: {stays}"
    return f"Your subscription is canceled at the end of the billing period: {stays}"


@require_POST
@owner_only
def cancel(request: HttpRequest, membership: Membership) -> HttpResponse:
    return _change_subscription(
        request,
        membership,
        services.cancel_subscription,
        _canceled_message,
    )


@require_POST
@owner_only
def resume(request: HttpRequest, membership: Membership) -> HttpResponse:
    return _change_subscription(
        request,
        membership,
        services.resume_subscription,
        lambda subscription, already: (
            f"Your subscription {'already ' if already else ''}continues; it renews as before."
        ),
    )


@require_POST
@owner_only
def change_plan(request: HttpRequest, membership: Membership) -> HttpResponse:
    return _change_subscription(
        request,
        membership,
        services.change_plan,
        lambda subscription, already: (
            f"Your subscription is {'already' if already else 'now'} on {_plan_name(subscription)}."
        ),
        plan_code=request.POST.get("plan", ""),
    )


@require_POST
@owner_only
def start_checkout(request: HttpRequest, membership: Membership) -> HttpResponse:
    """Paddle.js asks for a transaction to open; the account and customer come from here."""
    try:
        created = checkout.start_checkout(
            account=membership.account, plan_code=request.POST.get("plan", ""), actor=request.user
        )
    except (BillingError, PaddleError) as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse({"transaction_id": created.paddle_transaction_id})


@require_POST
@owner_only
def portal(request: HttpRequest, membership: Membership) -> HttpResponse:
    try:
        url = services.customer_portal_url(account=membership.account)
    except (BillingError, PaddleError) as error:
        messages.error(request, str(error))
        return redirect("billing")
    return redirect(url)


@owner_only
def invoice_pdf(request: HttpRequest, membership: Membership, transaction_id: str) -> HttpResponse:
    invoice = get_object_or_404(
        invoices_of(membership.account), paddle_transaction_id=transaction_id
    )
    try:
        url = services.invoice_pdf_url(invoice=invoice)
    except PaddleError as error:
        messages.error(request, str(error))
        return redirect("billing")
    return redirect(url)


@csrf_exempt
@require_POST
def paddle_webhook(request: HttpRequest) -> HttpResponse:
    try:
        webhooks.receive(request=request)
    except webhooks.WebhookRejected as rejection:
        return HttpResponse(
            rejection.reason, status=rejection.status_code, content_type="text/plain"
        )
    return HttpResponse("ok", content_type="text/plain")
