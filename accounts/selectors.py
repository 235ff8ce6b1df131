"""Reads scoped to what a user may see."""

from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import Account, AuditEvent, Membership, User

SESSION_ACCOUNT_KEY = "current_account"


def memberships_of(user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("account").order_by("created_at")


def accounts_visible_to(user: User) -> QuerySet[Account]:
    return Account.objects.filter(memberships__user=user)


def current_membership(request: HttpRequest) -> Membership | None:
    """The membership the signed-in user is acting through (chosen account, else the first)."""
    if not request.user.is_authenticated:
        return None
    cached = getattr(request, "_current_membership", None)
    if cached is not None:
        return cached
    memberships = memberships_of(request.user)
    chosen = request.session.get(SESSION_ACCOUNT_KEY)
    membership = (chosen and memberships.filter(account__public_id=chosen).first()) or (
        memberships.first()
    )
    request._current_membership = membership
    return membership


def act_through(request: HttpRequest, membership: Membership) -> None:
    """For the rest of this request, `current_membership` is `membership`: a page about
    another account's object (a project, a request) shows that account and its role."""
    request._current_membership = membership


def membership_in(*, user: User, account: Account) -> Membership:
    """The user's membership of an account they can see (fetched through a scoped selector)."""
    return Membership.objects.select_related("account").get(user=user, account=account)


def owner_addresses(
    account: Account, *, user_ids: list[int] | None = None
) -> list[tuple[int, str]]:
    """The account's owners (those of `user_ids` still owners, if given) as (user id,
    address), oldest membership first."""
    owners = account.memberships.filter(role=Membership.Role.OWNER)
    if user_ids is not None:
        owners = owners.filter(user_id__in=user_ids)
    return list(owners.order_by("created_at").values_list("user_id", "user__email"))


def audit_events_of(account: Account) -> QuerySet[AuditEvent]:
    return account.audit_events.select_related("actor").order_by("-created_at", "-pk")
