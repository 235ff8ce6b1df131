"""Reads for the privacy pages, scoped to the user's memberships: another tenant's export is
simply not in these querysets, so asking for it is a 404."""

from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import Account, Membership, User
from billing.models import Subscription
from privacy.models import AccountExport
from projects.models import ApiKey

RECENT_EXPORTS = 10


def exports_visible_to(user: User) -> QuerySet[AccountExport]:
    return AccountExport.objects.filter(account__memberships__user=user).select_related("account")


def recent_exports_of(account: Account) -> QuerySet[AccountExport]:
    """The latest exports (their files, in chunks, are not read)."""
    return account.exports.select_related("requested_by")[:RECENT_EXPORTS]


@dataclass(frozen=True)
class DeletionSummary:
    """What deleting the account would remove, for the page that asks for confirmation."""

    projects: int
    active_api_keys: int
    other_members: list[str]
    subscription_to_cancel: Subscription | None
    other_accounts: int


def deletion_summary(membership: Membership) -> DeletionSummary:
    account = membership.account
    return DeletionSummary(
        projects=account.projects.not_deleted().count(),
        active_api_keys=ApiKey.objects.filter(
            project__account=account, revoked_at__isnull=True
        ).count(),
        other_members=list(
            account.memberships.exclude(pk=membership.pk)
            .order_by("created_at")
            .values_list("user__email", flat=True)
        ),
        subscription_to_cancel=account.subscriptions.select_related("plan")
        .exclude(status=Subscription.Status.CANCELED)
        .first(),
        other_accounts=Membership.objects.filter(user=membership.user)
        .exclude(pk=membership.pk)
        .count(),
    )
