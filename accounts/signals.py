"""allauth hooks: a new user gets an account; a verified user gets a welcome email once."""

from allauth.account.signals import email_confirmed, user_logged_in, user_signed_up
from django.dispatch import receiver

from accounts.access import client_ip
from accounts.selectors import memberships_of
from accounts.services import create_account, record_audit_event, send_welcome_email


@receiver(user_signed_up)
def create_account_on_signup(sender, request, user, **kwargs):
    if not memberships_of(user).exists():
        create_account(owner=user)


@receiver(email_confirmed)
def welcome_after_verification(sender, request, email_address, **kwargs):
    if email_address.primary or email_address.user.email == email_address.email:
        send_welcome_email(user=email_address.user)


@receiver(user_logged_in)
def audit_sign_in(sender, request, user, **kwargs):
    ip_address = client_ip(request) if request else None
    for membership in memberships_of(user):
        record_audit_event(
            account=membership.account, actor=user, action="sign_in", ip_address=ip_address
        )
