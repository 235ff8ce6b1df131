"""Team membership changes: invitations within the plan's member limit, roles, removal."""

from collections.abc import Callable

from django.core import signing
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.emails import MAIL_ERRORS, send_email
from accounts.models import Account, Membership, User
from accounts.services import record_audit_event
from projects.limits import ensure_below, limits_for
from projects.models import INVITATION_VALID_FOR, Invitation
from projects.selectors import open_invitations_of, pending_invitations_of

INVITATION_SALT = "reqrun.invitation"
INVITATION_MAX_AGE = int(INVITATION_VALID_FOR.total_seconds())  # seconds, as the signer reads it
# Invitations send email to any address: an account may send this many per window, counted
# in the shared cache (Redis) so the limit holds across web processes.
INVITATIONS_PER_WINDOW = 20
INVITATION_WINDOW_SECONDS = 3600


class MembershipError(Exception):
    """A membership change that is not allowed; the message says why."""


def _count_invitation(account: Account) -> None:
    """Count one invitation email against the account's window, or refuse it. Callers hold
    the account's row lock, so an account's invitations are counted one at a time."""
    key = f"invitations-sent:{account.public_id}"
    try:
        sent = cache.incr(key)
    except ValueError:  # no window open yet (or it just ended): this invitation opens one
        cache.set(key, 1, timeout=INVITATION_WINDOW_SECONDS)
        sent = 1
    if sent > INVITATIONS_PER_WINDOW:
        raise MembershipError(
            f"This account has sent {INVITATIONS_PER_WINDOW} invitations within the hour, "
            "the most allowed. Try again later."
        )


def _uncount_invitation(account: Account) -> None:
    """An invitation whose email never went out does not use up the window."""
    try:
        cache.decr(f"invitations-sent:{account.public_id}")
    except ValueError:  # the window ended meanwhile: nothing left to give back
        pass


def _ensure_not_closing(account: Account) -> None:
    """Callers hold the account's row lock. An owner's deletion checked who the members are
    before it canceled the subscription at Paddle; that check must still hold when it ends."""
    if account.is_closing:
        raise MembershipError("This account is being deleted, so its members cannot change.")


def _member_noun(limit: int) -> str:
    return "team member" if limit == 1 else "team members"


def invitation_token(invitation: Invitation) -> str:
    return signing.dumps(invitation.public_id, salt=INVITATION_SALT)


@transaction.atomic
def invite_member(
    *,
    account: Account,
    email: str,
    role: str,
    actor: User,
    link_for: Callable[[str], str],
    ip_address: str | None = None,
) -> Invitation:
    """Invite `email`; `link_for(token)` is the accept URL, valid for seven days."""
    Account.objects.select_for_update().get(pk=account.pk)
    email = email.strip().lower()
    if account.memberships.filter(user__email__iexact=email).exists():
        raise MembershipError(f"{email} is already a member of this account.")
    if role not in Membership.Role.values:
        raise MembershipError("Choose owner, admin or member.")
    pending = pending_invitations_of(account)
    if pending.filter(email=email).exists():
        raise MembershipError(
            f"{email} already has a pending invitation. Withdraw it first to send a new one."
        )
    limits = limits_for(account)
    ensure_below(
        "members",
        used=account.memberships.count() + pending.count(),
        limit=limits.members,
        plan_name=limits.plan_name,
        noun=_member_noun(limits.members),
    )
    # Any open invitation left for this address has expired: the new one replaces it.
    open_invitations_of(account).filter(email=email).update(revoked_at=timezone.now())
    invitation = Invitation.objects.create(
        account=account, email=email, role=role, invited_by=actor
    )
    _count_invitation(account)  # only once the invitation is stored: a refused one costs nothing
    link = link_for(invitation_token(invitation))
    context = {"invitation": invitation, "link": link, "account": account, "inviter": actor}
    try:
        send_email(
            to=email,
            subject=f"You are invited to {account.name}",
            template="projects/email/invitation.txt",
            context=context,
        )
    except MAIL_ERRORS:
        # An invitation exists only once its email went out: the refusal rolls it back, so
        # the owner's retry is not told the address "already has a pending invitation".
        _uncount_invitation(account)
        raise MembershipError(
            "We could not send the invitation email just now, so no invitation was made. "
            "Try again in a few minutes."
        ) from None
    record_audit_event(
        account=account,
        actor=actor,
        action="member_invited",
        target=f"{email} as {role}",
        ip_address=ip_address,
    )
    return invitation


@transaction.atomic
def revoke_invitation(
    *, invitation: Invitation, actor: User, ip_address: str | None = None
) -> Invitation:
    """Withdraw a pending invitation: its link stops working."""
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.accepted_at:
        raise MembershipError(f"{invitation.email} has already joined; remove them instead.")
    if invitation.revoked_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        record_audit_event(
            account=invitation.account,
            actor=actor,
            action="invitation_withdrawn",
            target=invitation.email,
            ip_address=ip_address,
        )
    return invitation


def invitation_from_token(token: str, *, lock: bool = False) -> Invitation:
    """The pending invitation a link points at, or MembershipError saying why it cannot be used."""
    try:
        public_id = signing.loads(token, salt=INVITATION_SALT, max_age=INVITATION_MAX_AGE)
    except signing.SignatureExpired as error:
        raise MembershipError("This invitation has expired. Ask for a new one.") from error
    except signing.BadSignature as error:
        raise MembershipError("This invitation link is not valid.") from error
    invitations = Invitation.objects.select_related("account", "invited_by")
    if lock:
        invitations = invitations.select_for_update(of=("self",))
    invitation = invitations.filter(public_id=public_id).first()
    if invitation is None or invitation.revoked_at:
        raise MembershipError("This invitation was withdrawn.")
    if invitation.accepted_at:
        raise MembershipError("This invitation has already been used.")
    if invitation.is_expired:
        raise MembershipError("This invitation has expired. Ask for a new one.")
    return invitation


def ensure_invitation_for(invitation: Invitation, user: User) -> None:
    """Only the invited address may accept, only once, and only while the account's plan
    has room for another member (it may have been downgraded since the invitation)."""
    if user.email.lower() != invitation.email:
        raise MembershipError(
            f"This invitation was sent to {invitation.email}, but you are signed in as "
            f"{user.email}. Sign in with the invited address to accept."
        )
    account = invitation.account
    if account.memberships.filter(user=user).exists():
        raise MembershipError("You are already a member of this account.")
    limits = limits_for(account)
    if account.memberships.count() >= limits.members:  # the invitee cannot upgrade: say who can
        raise MembershipError(
            f"{account.name} already has the {limits.members} {_member_noun(limits.members)} "
            f"its {limits.plan_name} plan allows. Ask an owner of the account to make room or "
            "upgrade, then open this link again."
        )


@transaction.atomic
def accept_invitation(*, token: str, user: User, ip_address: str | None = None) -> Membership:
    # Members join one at a time under the account's row lock (as invitations are sent), so
    # two accepts cannot both take the last seat; the account first, then the invitation.
    account = invitation_from_token(token).account
    _ensure_not_closing(Account.objects.select_for_update().get(pk=account.pk))
    invitation = invitation_from_token(token, lock=True)  # a second accept waits, then fails
    ensure_invitation_for(invitation, user)
    membership = Membership.objects.create(
        user=user, account=invitation.account, role=invitation.role
    )
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    record_audit_event(
        account=invitation.account,
        actor=user,
        action="member_joined",
        target=f"{user.email} as {invitation.role}",
        ip_address=ip_address,
    )
    return membership


LAST_OWNER = "An account needs at least one owner: make someone else owner first."


def is_last_owner(membership: Membership) -> bool:
    return (
        membership.is_owner
        and not membership.account.memberships.filter(role=Membership.Role.OWNER)
        .exclude(pk=membership.pk)
        .exists()
    )


def _ensure_another_owner(membership: Membership) -> None:
    if is_last_owner(membership):
        raise MembershipError(LAST_OWNER)


def _lock_membership(membership: Membership) -> None:
    """Take the account's row lock, under which members change one at a time, and read the
    membership's role again (the owner checks need it as it is now). It may have ended while
    this waited: a second click on Remove or Leave, or another owner removed the member."""
    _ensure_not_closing(Account.objects.select_for_update().get(pk=membership.account_id))
    try:
        membership.refresh_from_db(fields=["role"])
    except Membership.DoesNotExist:
        raise MembershipError(
            f"{membership.user.email} is no longer a member of {membership.account.name}."
        ) from None


@transaction.atomic
def change_role(
    *, membership: Membership, role: str, actor: User, ip_address: str | None = None
) -> Membership:
    if role not in Membership.Role.values:
        raise MembershipError("Choose owner, admin or member.")
    _lock_membership(membership)
    if role == membership.role:
        return membership
    if role != Membership.Role.OWNER:
        _ensure_another_owner(membership)
    old_role = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record_audit_event(
        account=membership.account,
        actor=actor,
        action="role_changed",
        target=f"{membership.user.email}: {old_role} → {role}",
        ip_address=ip_address,
    )
    return membership


@transaction.atomic
def remove_member(
    *, membership: Membership, actor: User, ip_address: str | None = None
) -> Membership:
    """An owner takes `membership` away (their own included, if another owner remains)."""
    return _end_membership(membership, actor=actor, action="member_removed", ip=ip_address)


@transaction.atomic
def leave_account(*, membership: Membership, ip_address: str | None = None) -> Membership:
    """A member of any role leaves the account; the last owner cannot."""
    return _end_membership(membership, actor=membership.user, action="member_left", ip=ip_address)


def _end_membership(membership: Membership, *, actor: User, action: str, ip: str | None):
    _lock_membership(membership)
    _ensure_another_owner(membership)
    record_audit_event(
        account=membership.account,
        actor=actor,
        action=action,
        target=membership.user.email,
        ip_address=ip,
    )
    membership.delete()
    return membership
