"""Account-level dashboard pages: switching account, the account page, the security log."""

from allauth.mfa.utils import is_mfa_enabled
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.access import Need, member_view
from accounts.selectors import (
    SESSION_ACCOUNT_KEY,
    audit_events_of,
    current_membership,
    memberships_of,
)
from accounts.services import start_account
from core.ids import is_public_id

SECURITY_LOG_PAGE_SIZE = 50

ACTION_LABELS = {
    "sign_in": "Signed in",
    "account_closed_by_operator": "Account closed by ReqRun",
    "account_renamed": "Account renamed",
    "two_factor_added": "Two-factor sign-in added",
    "two_factor_removed": "Two-factor sign-in removed",
    "two_factor_reset": "Two-factor codes regenerated",
    "project_created": "Project created",
    "project_renamed": "Project renamed",
    "project_deleted": "Project deleted",
    "upstream_added": "Upstream added",
    "upstream_changed": "Upstream changed",
    "upstream_host_changed": "Upstream host changed",
    "upstream_enabled": "Upstream enabled",
    "upstream_disabled": "Upstream disabled",
    "upstream_removed": "Upstream removed",
    "upstreams_reordered": "Upstreams reordered",
    "failover_policy_changed": "Failover policy changed",
    "upstream_breaker_open": "Upstream breaker opened",
    "upstream_breaker_half_open": "Upstream breaker half-open (probing)",
    "upstream_breaker_closed": "Upstream breaker closed",
    "provider_key_set": "Provider key set",
    "provider_key_changed": "Provider key changed",
    "provider_key_removed": "Provider key removed",
    "api_key_created": "API key created",
    "api_key_revoked": "API key revoked",
    "member_invited": "Member invited",
    "invitation_withdrawn": "Invitation withdrawn",
    "member_joined": "Member joined",
    "member_removed": "Member removed",
    "member_left": "Member left",
    "role_changed": "Role changed",
    "suspended": "Suspended",
    "unsuspended": "Suspension lifted",
    "plan_changed": "Plan changed",
    "limit_changed": "Limit changed",
    "subscription_plan_changed": "Subscription plan changed",
    "subscription_cancel_scheduled": "Subscription set to end",
    "subscription_resumed": "Subscription resumed",
    "subscription_canceled": "Subscription canceled",
    "duplicate_subscription_canceled": "Second subscription canceled (two checkouts paid)",
    "reauthenticate": "Password confirmed",
    "export": "Data export",
}


@login_required
@require_POST
def switch_account(request):
    account_id = request.POST.get("account", "")
    mine = memberships_of(request.user).filter(account__public_id=account_id)
    if not is_public_id(account_id) or not mine.exists():
        raise Http404("No such account.")
    request.session[SESSION_ACCOUNT_KEY] = account_id
    return redirect("dashboard")


@login_required
def no_account(request):
    """Where a signed-in user without any account lands: join by invitation, or start one."""
    if current_membership(request) is not None:
        return redirect("dashboard")
    if request.method == "POST":
        account = start_account(user=request.user)
        if account is None:  # a second click: the first one started it
            return redirect("dashboard")
        request.session[SESSION_ACCOUNT_KEY] = account.public_id
        messages.success(request, f"Account “{account.name}” created on the Free plan.")
        return redirect("dashboard")
    return render(request, "accounts/no_account.html")


@member_view()
def account_page(request, membership):
    return render(
        request,
        "accounts/account.html",
        {"membership": membership, "two_factor_enabled": is_mfa_enabled(request.user)},
    )


@member_view(read=Need.OWN)
def security_log(request, membership):
    page = Paginator(audit_events_of(membership.account), SECURITY_LOG_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    events = [(event, ACTION_LABELS.get(event.action, event.action)) for event in page]
    return render(request, "accounts/security_log.html", {"page": page, "events": events})
