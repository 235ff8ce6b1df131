"""The signed-in home and account switching."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.selectors import SESSION_ACCOUNT_KEY, memberships_of


@login_required
def dashboard(request):
    return render(request, "accounts/dashboard.html")


@login_required
@require_POST
def switch_account(request):
    account_id = request.POST.get("account", "")
    if not memberships_of(request.user).filter(account__public_id=account_id).exists():
        raise Http404("No such account.")
    request.session[SESSION_ACCOUNT_KEY] = account_id
    return redirect("dashboard")
