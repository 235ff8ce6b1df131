"""Adding, removing or making primary an email asks for the password again (kept for five
minutes): a session someone else got hold of cannot move the account to an address whose
password-reset link they would read."""

import pytest
from allauth.account.models import EmailAddress

from tests.conftest import reauthenticate

pytestmark = pytest.mark.django_db

NEW = "alice.new@example.com"


def test_adding_an_email_asks_for_the_password_first(client, alice):
    client.force_login(alice)

    response = client.post("/accounts/email/", {"action_add": "", "email": NEW})

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/reauthenticate/")
    assert not EmailAddress.objects.filter(email=NEW).exists()

    reauthenticate(client)
    client.post("/accounts/email/", {"action_add": "", "email": NEW})

    assert EmailAddress.objects.filter(user=alice, email=NEW, verified=False).exists()


def test_making_another_address_primary_asks_for_it_too(client, alice):
    EmailAddress.objects.create(user=alice, email=NEW, verified=True, primary=False)
    client.force_login(alice)

    response = client.post("/accounts/email/", {"action_primary": "", "email": NEW})

    assert response["Location"].startswith("/accounts/reauthenticate/")
    assert EmailAddress.objects.get(email=alice.email).primary
