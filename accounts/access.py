"""Who may do what in the dashboard: members read, admins manage projects and keys, owners
manage members and see the security log. Shared by every app's dashboard views."""

from collections.abc import Callable
from enum import Enum
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.models import Membership
from accounts.selectors import current_membership


class Need(Enum):
    READ = "read"
    MANAGE = "manage"
    OWN = "own"


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
    """The address recorded in audit events (the proxy in front sets REMOTE_ADDR)."""
    return request.META.get("REMOTE_ADDR") or None


class NoAccount(Exception):
    """The signed-in user belongs to no account (theirs was deleted, or they were removed)."""


def load_current_membership(request: HttpRequest, kwargs: dict) -> tuple[Membership, dict]:
    membership = current_membership(request)
    if membership is None:
        raise NoAccount
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
            need = need_for(request, read=read, write=write)
            if not allows(membership, need):
                return refuse(request, need)
            return view(request, membership, **objects)

        return wrapper

    return decorator
