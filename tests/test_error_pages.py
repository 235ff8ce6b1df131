"""Refusals come in the site's layout and say what to do: a form that fails the CSRF check,
and anything that raises PermissionDenied. A failure of ReqRun's own is the 500 page."""

import logging

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.urls import reverse

from projects.models import Project

pytestmark = pytest.mark.django_db

LAYOUT = 'class="site-header"'


def test_a_form_that_fails_the_csrf_check_says_to_reload_and_try_again(alice, alice_account):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = client.post(reverse("project-list"), {"name": "Sent without its token"})

    assert response.status_code == 403
    page = response.content.decode()
    assert LAYOUT in page
    assert "Sign out" in page  # the layout knows who is signed in
    assert "reload the page and try again" in page
    assert "cookies" in page
    assert "CSRF verification failed" not in page
    assert not Project.objects.exists()


def test_a_permission_denied_is_a_403_page_in_the_layout(client):
    # allauth's rate limit needs the client's address; a peer that gives none is refused.
    response = client.post(
        reverse("account_login"),
        {"login": "dana@example.com", "password": "whatever-it-is"},
        REMOTE_ADDR="not-an-address",
    )

    assert response.status_code == 403
    page = response.content.decode()
    assert LAYOUT in page
    assert "not allowed" in page.lower()


@pytest.mark.parametrize(
    ("template", "heading"),
    [("500.html", "Something went wrong on our side"), ("503.html", "briefly unavailable")],
)
def test_the_pages_for_a_failure_render_alone_in_the_layout(
    template, heading, django_assert_num_queries
):
    from django.template.loader import render_to_string

    with django_assert_num_queries(0):  # what failed may be the database itself
        page = render_to_string(template)

    assert LAYOUT in page and heading in page
    assert "support@reqrun.com" in page


def test_a_middleware_failing_on_its_own_is_the_500_page_logged_as_an_error(caplog):
    browser = Client(raise_request_exception=False)
    session = browser.session
    session[SESSION_KEY] = "not-a-user-id"  # read by the middleware after the view
    session.save()

    with caplog.at_level(logging.WARNING):
        response = browser.get(reverse("healthz"))

    assert response.status_code == 500
    assert "Something went wrong on our side" in response.content.decode()
    logged = [
        (record.name, record.levelname, record.exc_info is not None)
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert logged == [("django.request", "ERROR", True)]
