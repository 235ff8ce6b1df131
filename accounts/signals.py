"""allauth hooks: a verified user gets a welcome email once; sign-ins and changes to a user's
second factors are audited in each of their accounts, and turning on a second factor ends the
user's other sessions. (A new user's account is made by the sign-up form,
accounts.forms.SignupForm, with the user.)"""

from allauth.account.signals import email_confirmed, user_logged_in
from allauth.mfa.models import Authenticator
from allauth.mfa.signals import authenticator_added, authenticator_removed, authenticator_reset
from django.dispatch import receiver

from accounts import tasks
from accounts.access import client_ip
from accounts.emails import send_or_retry
from accounts.services import (
    end_sessions,
    record_in_every_account,
    second_factor_name,
    send_welcome_email,
)


@receiver(email_confirmed)
def welcome_after_verification(sender, request, email_address, **kwargs):
    if email_address.primary or email_address.user.email == email_address.email:
        # The address is verified all the same; a welcome the mail server refused comes later.
        send_or_retry(
            lambda: send_welcome_email(user=email_address.user),
            task=tasks.send_welcome_email,
            ids=(email_address.user_id,),
        )


def _audit_in_every_account(request, user, action: str, target: str = "") -> None:
    """What the user did themselves, from this request."""
    ip_address = client_ip(request) if request else None
    record_in_every_account(
        user=user, actor=user, action=action, target=target, ip_address=ip_address
    )


@receiver(user_logged_in)
def audit_sign_in(sender, request, user, **kwargs):
    _audit_in_every_account(request, user, "sign_in")


SECOND_FACTOR_ACTIONS = {
    authenticator_added: "two_factor_added",
    authenticator_removed: "two_factor_removed",
    authenticator_reset: "two_factor_reset",  # recovery codes regenerated
}


@receiver(list(SECOND_FACTOR_ACTIONS))
def audit_second_factor(signal, sender, request, user, authenticator, **kwargs):
    """Whoever holds a session could weaken the sign-in: owners see every change."""
    _audit_in_every_account(
        request, user, SECOND_FACTOR_ACTIONS[signal], second_factor_name(authenticator)
    )


@receiver(authenticator_added)
def end_other_sessions_on_second_factor(sender, request, user, authenticator, **kwargs):
    """A session signed in with the password alone (perhaps someone else's, which is why
    a second factor is being added) must not outlive it; this browser stays signed in."""
    if authenticator.type == Authenticator.Type.RECOVERY_CODES or request is None:
        return
    end_sessions(user=user, keep_session_key=request.session.session_key)
