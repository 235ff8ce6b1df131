"""The page a form gets when it fails Django's CSRF check (CSRF_FAILURE_VIEW). Django's own
is a bare page for developers; this one is in the site's layout and tells the user what to
do. The middleware has already logged the reason."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    # Rendered with the request, so the layout shows who is signed in, and the page hands
    # the browser a fresh CSRF cookie for the retry.
    return render(request, "403_csrf.html", status=403)
