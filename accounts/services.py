"""State changes for users, accounts and memberships."""

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import Account, AuditEvent, Membership, User

logger = logging.getLogger(__name__)


@transaction.atomic
def create_account(*, owner: User, name: str = "") -> Account:
    """A new tenant with `owner` as its first owner."""
    account = Account.objects.create(name=name or f"{owner.email.split('@')[0]}'s workspace")
    Membership.objects.create(user=owner, account=account, role=Membership.Role.OWNER)
    logger.info("account created", extra={"account_id": account.public_id})
    return account


def record_audit_event(
    *, account: Account, actor: User | None, action: str, target: str = "",
    ip_address: str | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        account=account, actor=actor, action=action, target=target[:200], ip_address=ip_address
    )


def send_welcome_email(*, user: User) -> bool:
    """Send the welcome email once per user; False if it was already sent."""
    claimed = User.objects.filter(pk=user.pk, welcomed_at__isnull=True).update(
        welcomed_at=timezone.now()
    )
    if not claimed:
        return False
    context = {"user": user, "site_name": "ReqRun"}
    send_mail(
        subject="[ReqRun] Welcome to ReqRun",
        message=render_to_string("accounts/email/welcome.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[user.email],
    )
    logger.info("welcome email sent", extra={"user_id": user.pk})
    return True
