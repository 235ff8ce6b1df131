"""Deleting an account: closed at once by its owner (or by an operator, from the admin), its
data purged once nothing runs.

Closing happens in the owner's (or operator's) request. The owner's right to delete is
checked and the account marked closing (no member joins, leaves or changes role meanwhile);
then the Paddle subscription is canceled, at once, and a Paddle error stops everything there
(and clears the mark). Then, in one transaction, the API
keys are revoked, pending invitations withdrawn, exports in progress stopped, every
membership removed, and the owner's login deleted, with its sessions on every browser, unless
they belong to another account (an operator's closing keeps every login: the people may
belong elsewhere, or come back).

A worker then purges: it cancels the account's requests, waits until no attempt is still
running (an attempt already talking to the upstream finishes and its caller gets an answer,
rather than the rows vanishing under it), and deletes every row of the account. What is
left: one log line of metadata, and billing's stored Paddle events, detached from the
account. Webhooks arriving afterwards name an account that no longer exists, so billing
stores them unapplied and nothing comes back.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Account, Membership, User
from accounts.services import end_sessions, record_audit_event
from billing.models import Subscription
from billing.paddle import PaddleError
from billing.services import BillingError, cancel_subscription
from core.leases import Lease
from privacy.models import AccountDeletion, AccountExport
from projects.models import ApiKey
from projects.services import delete_project_rows
from requests_app.engine.cancel import cancel_request
from requests_app.models import ACTIVE_STATUSES, Request, Status

logger = logging.getLogger(__name__)

# Callers woken by the cancellations read their answer in this time, before the rows go.
PURGE_GRACE = timedelta(seconds=5)
PURGE_BATCH_SIZE = 1000
# A purge holds its account under a lease renewed at each batch of requests: one that died
# lets the next take over once it runs out.
PURGE_LEASE = timedelta(minutes=2)


class DeletionRefused(Exception):
    """The account cannot be deleted now; the message says why. Nothing was changed."""


class WrongPassword(DeletionRefused):
    pass


@dataclass(frozen=True)
class ClosedAccount:
    account_id: str
    login_deleted: bool


def deletion_blocker(membership: Membership) -> str | None:
    """Why this member cannot delete the account, or None if they can."""
    if not membership.is_owner:
        return "Only owners of this account can delete it."
    others = membership.account.memberships.exclude(pk=membership.pk)
    if others.exists() and not others.filter(role=Membership.Role.OWNER).exists():
        count = others.count()
        people = "1 other person uses" if count == 1 else f"{count} other people use"
        return (
            f"You are the only owner of this account, and {people} it. Before deleting it, "
            "remove them on the Members page — or, to leave the account to them, make one of "
            "them an owner and ask them to remove you."
        )
    return None


def _cancel_subscriptions(*, account: Account, actor: User, ip_address: str | None) -> None:
    """Stop billing first: if Paddle says no, nothing of ours has changed yet.

    Every subscription that has not ended is canceled at once, paused ones and ones already
    set to end included: a paused subscription could resume by itself later."""
    subscriptions = account.subscriptions.exclude(status=Subscription.Status.CANCELED)
    for subscription in subscriptions:
        try:
            cancel_subscription(
                subscription=subscription, actor=actor, ip_address=ip_address, at_once=True
            )
        except (PaddleError, BillingError) as error:
            raise DeletionRefused(f"{error} The account was not deleted.") from error


def _close(account: Account, *, now: datetime) -> None:
    """Inside the caller's transaction, with the account's row locked: nothing of it works
    from now on, and its purge is queued after commit."""
    deletion, _ = AccountDeletion.objects.get_or_create(
        account=account, defaults={"purge_after": now + PURGE_GRACE}
    )
    ApiKey.objects.filter(project__account=account, revoked_at__isnull=True).update(revoked_at=now)
    account.invitations.filter(accepted_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=now
    )
    account.exports.filter(
        status__in=[AccountExport.Status.PENDING, AccountExport.Status.RUNNING]
    ).update(status=AccountExport.Status.FAILED, error="The account was deleted.")
    account.memberships.all().delete()
    transaction.on_commit(lambda: _enqueue_purge(deletion.pk))


def _ensure_may_delete(membership: Membership) -> None:
    """Under the account's row lock: the member, read afresh, may delete the account."""
    membership = Membership.objects.select_related("account").filter(pk=membership.pk).first()
    if membership is None:
        raise DeletionRefused("You are no longer a member of this account.")
    if reason := deletion_blocker(membership):
        raise DeletionRefused(reason)


def _start_closing(membership: Membership) -> None:
    """Check that the owner may delete the account and mark it closing, under its row lock
    and before Paddle is called: until the deletion ends, nobody joins, leaves or changes
    role (see `projects.members`), so a deletion refused after the subscription was canceled
    cannot happen, and no row lock is held while Paddle answers."""
    with transaction.atomic():
        account = Account.objects.select_for_update().get(pk=membership.account_id)
        if account.is_closing:
            raise DeletionRefused("This account is already being deleted.")
        _ensure_may_delete(membership)
        account.closing_since = timezone.now()
        account.save(update_fields=["closing_since"])


def close_account(
    *, membership: Membership, password: str, ip_address: str | None = None
) -> ClosedAccount:
    """Delete `membership.account` on its owner's word (their password), as described above.

    The purge is queued after commit; the caller signs the user out.
    """
    user, account = membership.user, membership.account
    if not user.check_password(password):
        raise WrongPassword("That password is not correct. Nothing was deleted.")
    _start_closing(membership)
    try:
        _cancel_subscriptions(account=account, actor=user, ip_address=ip_address)
        with transaction.atomic():
            Account.objects.select_for_update().get(pk=account.pk)
            # Again, should the mark have outlived CLOSING_HOLDS_FOR.
            _ensure_may_delete(membership)
            _close(account, now=timezone.now())
            login_deleted = not Membership.objects.filter(user=user).exists()
            if login_deleted:
                end_sessions(user=user)  # other browsers' sessions hold the email
                user.delete()
    except BaseException:
        Account.objects.filter(pk=account.pk).update(closing_since=None)
        raise
    logger.info(
        "account closed",
        extra={"account_id": account.public_id, "login_deleted": login_deleted},
    )
    return ClosedAccount(account_id=account.public_id, login_deleted=login_deleted)


def close_account_by_operator(
    *, account: Account, operator: User, reason: str, ip_address: str | None = None
) -> None:
    """Delete `account` on an operator's word (the admin's "Close and delete" action): the
    same steps as an owner's deletion, with no password and no hand-over required, and every
    member's login kept. The reason goes into the account's audit trail until the purge;
    the admin's own history keeps it after."""
    _cancel_subscriptions(account=account, actor=operator, ip_address=ip_address)
    with transaction.atomic():
        if not Account.objects.select_for_update().filter(pk=account.pk).exists():
            raise DeletionRefused("The account no longer exists.")
        record_audit_event(
            account=account,
            actor=operator,
            action="account_closed_by_operator",
            target=reason,
            ip_address=ip_address,
        )
        _close(account, now=timezone.now())
    logger.info(
        "account closed by an operator",
        extra={"account_id": account.public_id, "operator_id": operator.pk},
    )


def _enqueue_purge(deletion_pk: int) -> None:
    from privacy.tasks import purge_deleted_account  # the task module imports this one

    # At once: its first run cancels the requests, its retries delete once they may.
    purge_deleted_account.delay(deletion_pk)


def cancel_active_requests(account: Account) -> int:
    """Queued and retrying requests end now; running ones finish their attempt only."""
    canceled = 0
    active = Request.objects.filter(
        account=account, status__in=ACTIVE_STATUSES, cancel_requested=False
    ).only("pk", "public_id")
    for request in active.iterator(chunk_size=PURGE_BATCH_SIZE):
        canceled += cancel_request(request=request)
    return canceled


def attempt_running(account: Account, *, now: datetime) -> bool:
    """An attempt still holds a live lease (a worker whose lease ran out is presumed dead)."""
    return Request.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__gt=now),
        account=account,
        status=Status.RUNNING,
    ).exists()


def purge_deleted_account(*, deletion_pk: int, now: datetime | None = None) -> bool:
    """Finish a deletion if nothing of the account still runs; True once the account is gone.
    False while it must wait, or while another purge of it runs (it holds the lease).

    Safe to run any number of times, concurrently too: a second run finds less, nothing, or
    the other's lease.
    """
    deletion = AccountDeletion.objects.select_related("account").filter(pk=deletion_pk).first()
    if deletion is None:
        return True
    account = deletion.account
    cancel_active_requests(account)
    now = now or timezone.now()
    if now < deletion.purge_after or attempt_running(account, now=now):
        return False
    lease = Lease(
        AccountDeletion.objects.filter(pk=deletion.pk), field="purging_until", length=PURGE_LEASE
    )
    with lease.held() as taken:
        if not taken:
            return False
        # Project by project, as a project's own purge deletes it (the same order of locks).
        projects = list(account.projects.order_by("pk"))
        requests = sum(
            delete_project_rows(project, between_batches=lease.renew) for project in projects
        )
        with transaction.atomic():
            account.delete()  # everything else of it goes with it (CASCADE)
    # The only record left of the account: metadata, no names or addresses.
    logger.info(
        "account deleted",
        extra={
            "account_id": account.public_id,
            "closed_at": deletion.requested_at.isoformat(),
            "requests_deleted": requests,
            "projects_deleted": len(projects),
        },
    )
    return True


def due_deletions(*, now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    return list(
        AccountDeletion.objects.filter(purge_after__lte=now)
        .order_by("purge_after")
        .values_list("pk", flat=True)[:100]
    )
