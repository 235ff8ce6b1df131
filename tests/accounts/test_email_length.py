"""An email address longer than the 254 characters the database stores, or one whose domain
cannot be written into a mail header, is a form error on every form that takes one, never a
server error."""

import pytest
from allauth.account.models import EmailAddress
from django.core import mail

from accounts.models import User
from tests.accounts.test_signup import STRONG
from tests.conftest import reauthenticate

pytestmark = pytest.mark.django_db

TOO_LONG = "x" * 300 + "@example.com"
LONGEST = "x" * (254 - len("@example.com")) + "@example.com"
# Django's validator takes it; a soft hyphen alone is an empty label once the domain is
# written for mail (IDNA), so no message could be addressed to it.
UNMAILABLE = "dana@\u00ad.example.com"
UNMAILABLE_ERROR = "No email can be sent to this address"


def test_adding_an_email_that_is_too_long_is_a_form_error(client, alice):
    client.force_login(alice)
    reauthenticate(client)

    response = client.post("/accounts/email/", {"action_add": "", "email": TOO_LONG})

    assert response.status_code == 200
    assert "at most 254 characters" in response.content.decode()
    assert not EmailAddress.objects.filter(email=TOO_LONG).exists()


def test_adding_the_longest_email_that_fits_works(client, alice):
    client.force_login(alice)
    reauthenticate(client)

    response = client.post("/accounts/email/", {"action_add": "", "email": LONGEST})

    assert response.status_code == 302
    assert EmailAddress.objects.filter(user=alice, email=LONGEST).exists()


def test_signing_up_with_an_email_that_is_too_long_is_a_form_error(client):
    response = client.post(
        "/accounts/signup/", {"email": TOO_LONG, "password1": STRONG, "password2": STRONG}
    )

    assert response.status_code == 200
    assert "at most 254 characters" in response.content.decode()
    assert not User.objects.exists()


def test_signing_in_with_an_email_that_is_too_long_is_refused_like_a_wrong_password(client):
    response = client.post("/accounts/login/", {"login": TOO_LONG, "password": STRONG})

    assert response.status_code == 200
    assert "are not correct" in response.content.decode()


def test_resetting_a_password_for_an_email_that_is_too_long_is_a_form_error(client):
    response = client.post("/accounts/password/reset/", {"email": TOO_LONG})

    assert response.status_code == 200
    assert "at most 254 characters" in response.content.decode()
    assert mail.outbox == []


def test_adding_an_email_no_mail_can_reach_is_a_form_error(client, alice):
    client.force_login(alice)
    reauthenticate(client)

    response = client.post("/accounts/email/", {"action_add": "", "email": UNMAILABLE})

    assert response.status_code == 200
    assert UNMAILABLE_ERROR in response.content.decode()
    assert not EmailAddress.objects.filter(email=UNMAILABLE).exists()
    assert mail.outbox == []


def test_signing_up_with_an_email_no_mail_can_reach_is_a_form_error(client):
    response = client.post(
        "/accounts/signup/", {"email": UNMAILABLE, "password1": STRONG, "password2": STRONG}
    )

    assert response.status_code == 200
    assert UNMAILABLE_ERROR in response.content.decode()
    assert not User.objects.exists()
    assert mail.outbox == []


def test_resetting_a_password_for_an_email_no_mail_can_reach_is_a_form_error(client):
    response = client.post("/accounts/password/reset/", {"email": UNMAILABLE})

    assert response.status_code == 200
    assert UNMAILABLE_ERROR in response.content.decode()
    assert mail.outbox == []
