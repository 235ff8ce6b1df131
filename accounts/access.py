"""Who may do what in the dashboard: members read, admins manage projects and keys, owners
manage members and see the security log; and which address a request came from. Shared by
every app's dashboard views."""

from collections.abc import Callable
from enum import Enum
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.models import Membership
from accounts.selectors import act_through, current_membership
from core.client_address import client_ip_of


class Need(Enum):
    READ = "read"
    MANAGE = "manage"
    OWN = "own"


SWITCHED_ACCOUNT = (
    "This page was opened for another account than the one you are now using (you switched "
    "account in another tab). Open the page again to act on the account you are using now."
)
REFUSALS = {
    Need.MANAGE: "Only owners and admins can change projects and API keys; "
    "your role in this account is read-only. Ask an owner to make you an admin.",
    Need.OWN: "Only owners of this account can manage its members and see its security log.",
}


def allows(membership: Membership, need: Need) -> bool:
    if need is Need.OWN:
        return membership.is_owner
    if need is Need.MANAGE:
        return membership.can_manage
    return True


def refuse(request: HttpRequest, need: Need) -> HttpResponse:
    """A 403 page that says which role is missing; nothing was changed."""
    return render(request, "accounts/forbidden.html", {"reason": REFUSALS[need]}, status=403)


def need_for(request: HttpRequest, *, read: Need, write: Need) -> Need:
    return read if request.method in ("GET", "HEAD", "OPTIONS") else write


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, for rate limits and audit events: see client_ip_of()."""
    return client_ip_of(request.META)


class NoAccount(Exception):
    """The signed-in user belongs to no account (theirs was deleted, or they were removed)."""


class SwitchedAccount(Exception):
    """A form names the account its page showed, and the user has chosen another since."""


def load_current_membership(request: HttpRequest, kwargs: dict) -> tuple[Membership, dict]:
    membership = current_membership(request)
    if membership is None:
        raise NoAccount
    # The account-level forms name the account their page was about
    # (accounts/_page_account.html): sent after a switch of account in another tab, they
    # would otherwise change an account the user did not see on that page.
    named = request.POST.get("account") if request.method == "POST" else None
    if named and named != membership.account.public_id:
        raise SwitchedAccount
    return membership, kwargs


Loader = Callable[[HttpRequest, dict], tuple[Membership, dict]]


def member_view(
    *, read: Need = Need.READ, write: Need = Need.MANAGE, load: Loader = load_current_membership
) -> Callable:
    """Sign-in required; `load` turns the URL's ids into the acting membership and the objects
    the view gets (a 404 for anything outside the user's accounts; by default the current
    account). The view is called as `view(request, membership, **objects)`; roles below
    `read` (GET) or `write` (POST) get a 403 page instead."""

    def decorator(view: Callable) -> Callable:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, **kwargs) -> HttpResponse:
            try:
                membership, objects = load(request, kwargs)
            except NoAccount:
                return redirect("no-account")
            except SwitchedAccount:
                context = {"reason": SWITCHED_ACCOUNT}
                return render(request, "accounts/forbidden.html", context, status=400)
            # The layout's account and role, and every role-based control on the page,
            # follow the account the page is about, whichever one the session has chosen.
            act_through(request, membership)
            need = need_for(request, read=read, write=write)
            if not allows(membership, need):
                return refuse(request, need)
            return view(request, membership, **objects)

        return wrapper

    return decorator
