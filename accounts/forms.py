"""allauth's forms made ReqRun's: sign-up creates the new user's account (workspace) with the
user; the two-factor code step says so when the stored secret cannot be decrypted."""

from allauth.account.forms import SignupForm as AllauthSignupForm
from allauth.mfa.adapter import get_adapter as get_mfa_adapter
from allauth.mfa.base import forms as mfa_forms
from django.db import transaction
from django.http import HttpRequest

from accounts.mfa import SecretUnreadable, log_unreadable
from accounts.models import User
from accounts.services import create_account


class SignupForm(AllauthSignupForm):
    @transaction.atomic
    def save(self, request: HttpRequest) -> User:
        """The user, their email address and their account in one transaction: if any of
        them fails, nobody is left behind who could sign in to no account, and signing up
        again starts afresh."""
        user = super().save(request)
        create_account(owner=user)
        return user


class _SaysSecretUnreadable:
    """A code checked against a secret no key opens is refused with why, never a 500: the
    user is not signed in (or reauthenticated) without the second factor."""

    def clean_code(self) -> str:
        try:
            return super().clean_code()
        except SecretUnreadable:
            log_unreadable(self.user.pk)
            raise get_mfa_adapter().validation_error("secret_unreadable") from None


class AuthenticateForm(_SaysSecretUnreadable, mfa_forms.AuthenticateForm):
    pass


class ReauthenticateForm(_SaysSecretUnreadable, mfa_forms.ReauthenticateForm):
    pass
