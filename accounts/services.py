"""State changes for users, accounts and memberships."""

import logging
from datetime import UTC, datetime
from typing import Protocol

from allauth.mfa.models import Authenticator
from allauth.usersessions.adapter import get_adapter as get_usersessions_adapter
from allauth.usersessions.models import UserSession
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.text import Truncator

from accounts.emails import (
    MAIL_ERRORS,
    UsersStillOwed,
    kind_of,
    log_unsent,
    refused_for_good,
    send_email,
    send_or_retry_on_commit,
)
from accounts.models import Account, AuditEvent, Membership, User
from accounts.selectors import memberships_of, owner_addresses

logger = logging.getLogger(__name__)


WORKSPACE_SUFFIX = "'s workspace"


def default_account_name(email: str) -> str:
    """The name of a new user's account: dana@example.com gets "dana's workspace"; a local
    part too long for the name is cut short with an ellipsis."""
    room = Account._meta.get_field("name").max_length - len(WORKSPACE_SUFFIX)
    return Truncator(email.rpartition("@")[0]).chars(room) + WORKSPACE_SUFFIX


def end_sessions(*, user: User, keep_session_key: str | None = None) -> None:
    """Sign `user` out of every browser (but the one holding `keep_session_key`): each
    session is deleted, with what it keeps of the sign-in (the email it was made with)."""
    sessions = UserSession.objects.filter(user=user)
    if keep_session_key is not None:
        sessions = sessions.exclude(session_key=keep_session_key)
    get_usersessions_adapter().end_sessions(sessions)


@transaction.atomic
def create_account(*, owner: User, name: str = "") -> Account:
    """A new tenant with `owner` as its first owner."""
    account = Account.objects.create(name=name or default_account_name(owner.email))
    Membership.objects.create(user=owner, account=account, role=Membership.Role.OWNER)
    # Said once the account exists for good: a caller's transaction may still roll it back.
    transaction.on_commit(
        lambda: logger.info("account created", extra={"account_id": account.public_id})
    )
    return account


@transaction.atomic
def start_account(*, user: User) -> Account | None:
    """A new account for a user who belongs to none (theirs was deleted, or they were
    removed), or None if they belong to one by now: under the user's row lock, so a double
    click on "Start an account" starts one."""
    User.objects.select_for_update().filter(pk=user.pk).exists()
    if Membership.objects.filter(user=user).exists():
        return None
    return create_account(owner=user)


@transaction.atomic
def rename_account(
    *, account: Account, name: str, actor: User | None = None, ip_address: str | None = None
) -> Account:
    """Give the account another name; its owners see the change in the security log."""
    previous = Account.objects.select_for_update().values_list("name", flat=True).get(pk=account.pk)
    account.name = name
    if name != previous:
        account.save(update_fields=["name"])
        record_audit_event(
            account=account,
            actor=actor,
            action="account_renamed",
            target=f"{previous} → {name}",
            ip_address=ip_address,
        )
    return account


def record_audit_event(
    *,
    account: Account,
    actor: User | None,
    action: str,
    target: str = "",
    ip_address: str | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        account=account, actor=actor, action=action, target=target[:200], ip_address=ip_address
    )


def record_in_every_account(
    *,
    user: User,
    actor: User | None,
    action: str,
    target: str = "",
    ip_address: str | None = None,
) -> None:
    """An event about `user`'s own sign-in (a sign-in, a second factor) goes into the
    security log of each account they belong to: its owners see every change to it."""
    for membership in memberships_of(user):
        record_audit_event(
            account=membership.account,
            actor=actor,
            action=action,
            target=target,
            ip_address=ip_address,
        )


SECOND_FACTOR_NAMES = {
    Authenticator.Type.TOTP: "Authenticator app",
    Authenticator.Type.RECOVERY_CODES: "Recovery codes",
    Authenticator.Type.WEBAUTHN: "Security key",
}


def second_factor_name(authenticator: Authenticator) -> str:
    return SECOND_FACTOR_NAMES.get(authenticator.type, authenticator.type)


@transaction.atomic
def remove_second_factor(
    *, authenticator: Authenticator, actor: User, ip_address: str | None = None
) -> None:
    """An operator removes a user's authenticator (they lost their phone, say). As when the
    user removes it, their recovery codes go with their last app or key (alone they are
    no second factor), and each removal is in the security log of each of their accounts,
    naming the operator. The user is signed out everywhere: a session whose sign-in passed
    with the removed factor (the lost phone's own, perhaps) does not keep that standing.
    The user is emailed: someone else changed how they sign in. (Their own removal, in the
    dashboard, sends none: they made it.)"""
    user = authenticator.user
    # allauth regenerates recovery codes under this lock: none are left without an app.
    User.objects.select_for_update().filter(pk=user.pk).exists()
    removed, _ = Authenticator.objects.filter(pk=authenticator.pk).delete()
    if not removed:
        return  # removed meanwhile, and recorded by whoever removed it
    gone = [authenticator]
    left = Authenticator.objects.filter(user=user)
    second_factor_left = left.exclude(type=Authenticator.Type.RECOVERY_CODES).exists()
    if not second_factor_left:
        gone += list(left)
        left.delete()
    for each in gone:
        record_in_every_account(
            user=user,
            actor=actor,
            action="two_factor_removed",
            target=second_factor_name(each),
            ip_address=ip_address,
        )
    end_sessions(user=user)
    logger.info("second factor removed by an operator", extra={"user_id": user.pk})
    from accounts import tasks  # the task module imports this one

    removed_at = int(timezone.now().timestamp())
    send_or_retry_on_commit(
        lambda: send_second_factor_removed_email(
            user=user, removed_at=removed_at, second_factor_left=second_factor_left
        ),
        task=tasks.send_second_factor_removed_email,
        ids=(user.pk, removed_at, int(second_factor_left)),
    )


def send_second_factor_removed_email(
    *, user: User, removed_at: int, second_factor_left: bool
) -> None:
    """Tell the user ReqRun support removed their second factor at `removed_at` (a Unix
    time): all of it, or, with `second_factor_left`, their recovery codes alone (a user has
    one authenticator app, security keys are not offered, and the codes go with the app). A
    send the mail server refused raises (MAIL_ERRORS)."""
    context = {
        "removed_at": datetime.fromtimestamp(removed_at, tz=UTC),
        "second_factor_left": second_factor_left,
    }
    send_email(
        to=user.email,
        subject="Two-factor sign-in removed from your account",
        template="accounts/email/second_factor_removed.txt",
        context=context,
    )
    logger.info("second factor removal emailed", extra={"user_id": user.pk})


class Suspendable(Protocol):
    """An account or a project: operators suspend either, with a reason, and nothing is deleted."""

    public_id: str
    suspended_at: datetime | None
    suspension_reason: str

    def save(self, *, update_fields: list[str]) -> None: ...


@transaction.atomic
def set_suspension(
    *,
    subject: Suspendable,
    account: Account,
    reason: str | None,
    actor: User | None = None,
    ip_address: str | None = None,
) -> None:
    """Suspend `subject` for `reason`, or lift its suspension when `reason` is None; audited."""
    if reason is not None:
        reason = reason.strip()
        if not reason:
            raise ValueError("Give the reason for the suspension: the customer sees it.")
        subject.suspended_at = subject.suspended_at or timezone.now()
        subject.suspension_reason = reason
        action, target = "suspended", f"{subject.public_id}: {reason}"
    elif subject.suspended_at is None:
        return
    else:
        subject.suspended_at = None
        subject.suspension_reason = ""
        action, target = "unsuspended", subject.public_id
    subject.save(update_fields=["suspended_at", "suspension_reason"])
    record_audit_event(
        account=account, actor=actor, action=action, target=target, ip_address=ip_address
    )
    logger.info("suspension changed", extra={"subject_id": subject.public_id, "action": action})


def suspend_account(
    *, account: Account, reason: str, actor: User | None = None, ip_address: str | None = None
) -> Account:
    set_suspension(
        subject=account, account=account, reason=reason, actor=actor, ip_address=ip_address
    )
    return account


def unsuspend_account(
    *, account: Account, actor: User | None = None, ip_address: str | None = None
) -> Account:
    set_suspension(
        subject=account, account=account, reason=None, actor=actor, ip_address=ip_address
    )
    return account


def email_owners(
    *,
    account: Account,
    subject: str,
    template: str,
    context: dict,
    owner_ids: list[int] | None = None,
) -> int:
    """Send the account's owners (only those of `owner_ids`, for a retry) one message each
    (owners do not see each other's address); how many went out. Each send refused is
    logged. An address the mail server refuses for good is skipped; any other refusal stops
    the sending and raises UsersStillOwed (one of MAIL_ERRORS) with the ids of the owners
    not reached yet, for a caller that retries them alone."""
    body = render_to_string(template, {**context, "account": account})
    owners = owner_addresses(account, user_ids=owner_ids)
    sent = 0
    for position, (_, address) in enumerate(owners):
        try:
            send_mail(
                subject=f"[ReqRun] {subject}",
                message=body,
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=[address],
            )
        except MAIL_ERRORS as error:
            log_unsent(kind=kind_of(template), error=error)
            if refused_for_good(error):
                continue
            # Without the error: its text can hold the address.
            raise UsersStillOwed([user_id for user_id, _ in owners[position:]]) from None
        sent += 1
    logger.info(
        "owners emailed",
        extra={"account_id": account.public_id, "template": template, "count": sent},
    )
    return sent


def send_welcome_email(*, user: User) -> bool:
    """Send the welcome email once per user; False if it was already sent. A send the mail
    server refused raises (MAIL_ERRORS) and leaves the welcome owed, for a retry."""
    claimed = User.objects.filter(pk=user.pk, welcomed_at__isnull=True).update(
        welcomed_at=timezone.now()
    )
    if not claimed:
        return False
    context = {"user": user, "site_name": "ReqRun"}
    try:
        send_email(
            to=user.email,
            subject="Welcome to ReqRun",
            template="accounts/email/welcome.txt",
            context=context,
        )
    except MAIL_ERRORS:
        User.objects.filter(pk=user.pk).update(welcomed_at=None)
        raise
    logger.info("welcome email sent", extra={"user_id": user.pk})
    return True
