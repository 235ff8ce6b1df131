"""Who may do what in the dashboard: members read, admins manage projects and keys, owners
manage members and see the security log; and which address a request came from. Shared by
every app's dashboard views."""

import ipaddress
from collections.abc import Callable, Mapping
from enum import Enum
from functools import lru_cache, wraps

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.models import Membership
from accounts.selectors import act_through, current_membership


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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    networks = []
    for entry in entries:
        if entry == "*":
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as error:
            raise ImproperlyConfigured(
                f"REQRUN_TRUSTED_PROXIES: {entry!r} is not an IP address or network "
                "(use e.g. 127.0.0.1,10.0.0.0/8, or * behind a platform router)."
            ) from error
    return tuple(networks)


def trusted_proxy_networks() -> tuple[IPNetwork, ...]:
    """REQRUN_TRUSTED_PROXIES parsed; ImproperlyConfigured names an entry that is not one."""
    return _networks(tuple(settings.REQRUN_TRUSTED_PROXIES))


def is_trusted_proxy(address: IPAddress) -> bool:
    if "*" in settings.REQRUN_TRUSTED_PROXIES:
        return True
    return any(address in network for network in trusted_proxy_networks())


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it (`203.0.113.7`, `[2001:db8::1]:443`, `1.2.3.4:80`), or
    None when it is not one. IPv4-mapped IPv6 peers count as their IPv4 address."""
    text = text.strip()
    if text.startswith("["):
        text, closed, _ = text[1:].partition("]")
        if not closed:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, for rate limits and audit events: see client_ip_of()."""
    return client_ip_of(request.META)


def client_ip_of(meta: Mapping[str, str]) -> str | None:
    """The client's address, from a request's META (where only that is at hand, as in /v1
    authentication).

    The peer (REMOTE_ADDR) unless it is one of REQRUN_TRUSTED_PROXIES; then X-Forwarded-For is
    read from the right (each proxy appends the address it saw) and the first hop that is not
    a trusted proxy is the client. Hops left of it were written by the client and are never
    believed; a malformed hop ends the walk at the last address a trusted proxy vouched for.
    With `*` every address would count as a proxy and the walk would end at the client's own
    claim: the peer is the platform's router, and only the hop it wrote is believed.
    """
    address = parse_address(meta.get("REMOTE_ADDR", ""))
    if address is None:
        return None
    hops = meta.get("HTTP_X_FORWARDED_FOR", "").split(",")
    if "*" in settings.REQRUN_TRUSTED_PROXIES:
        hops = hops[-1:]
    for hop in reversed(hops):
        if not is_trusted_proxy(address):
            break
        forwarded = parse_address(hop)
        if forwarded is None:
            break
        address = forwarded
    return str(address)


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
