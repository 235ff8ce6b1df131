"""allauth's sign-up form, made to create the new user's account (workspace) with the user."""

from allauth.account.forms import SignupForm as AllauthSignupForm
from django.db import transaction
from django.http import HttpRequest

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
