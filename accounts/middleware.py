"""A two-factor page (the overview, the recovery codes) that reads a secret no key in
REQRUN_ENCRYPTION_KEYS opens says so in the page, rather than a 500. allauth reads the secret
in its views and templates, so the error is met here, once, for all of them."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.mfa import UNREADABLE_SECRET, SecretUnreadable, log_unreadable


class TwoFactorSecretUnreadableMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, SecretUnreadable):
            return None
        log_unreadable(request.user.pk)
        return render(request, "mfa/secret_unreadable.html", {"message": UNREADABLE_SECRET})
