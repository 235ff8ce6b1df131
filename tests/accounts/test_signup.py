"""Sign-up, verification, sign-in, welcome email and password reset, end to end."""

import re

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.db import IntegrityError, connection
from django.urls import reverse

from accounts.models import Membership, User
from tests.factories import PASSWORD, UserFactory
from tests.markup import duplicate_ids, paragraph_faults

pytestmark = pytest.mark.django_db

STRONG = "violet-kettle-harbor-91"


def link_in(message) -> str:
    return re.search(r"https?://[^/\s]+(/\S+)", message.body).group(1)


def sign_up(client, email="dana@example.com", password1=STRONG, password2=STRONG):
    return client.post(
        "/accounts/signup/", {"email": email, "password1": password1, "password2": password2}
    )


def test_signup_verify_sign_in_and_welcome(client):
    response = sign_up(client)
    assert response.status_code == 302
    user = User.objects.get(email="dana@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == "owner"
    assert len(mail.outbox) == 1
    assert "confirm" in mail.outbox[0].subject.lower()

    confirm_path = link_in(mail.outbox[0])
    assert client.get(confirm_path).status_code == 200  # a page with a confirm button
    response = client.post(confirm_path)
    assert response.status_code == 302
    assert EmailAddress.objects.get(user=user).verified
    assert [m.subject for m in mail.outbox[1:]] == ["[ReqRun] Welcome to ReqRun"]

    client.logout()
    response = client.post("/accounts/login/", {"login": "dana@example.com", "password": STRONG})
    assert response.status_code == 302
    assert response["Location"] == "/app/"
    assert client.get("/app/").status_code == 200

    # The welcome email goes out once, even if the address is confirmed again.
    client.post(confirm_path)
    assert len([m for m in mail.outbox if "Welcome" in m.subject]) == 1


def test_the_signup_page_nests_its_markup_validly(client):
    # The password help is a list: inside a <p> a browser splits it off and leaves an empty <p>.
    page = client.get("/accounts/signup/").content.decode()
    assert "<ul" in page
    assert paragraph_faults(page) == []
    assert duplicate_ids(page) == []
    refused = sign_up(client, password2="another-kettle-harbor-92").content.decode()
    assert "errorlist" in refused
    assert paragraph_faults(refused) == []


LONG_LOCAL_PART = "a" * 89 + "@example.com"  # "<local part>'s workspace" is over 100


def test_signup_with_a_long_local_part_gets_an_account_whose_name_fits(client):
    response = sign_up(client, email=LONG_LOCAL_PART)

    assert response.status_code == 302
    membership = Membership.objects.select_related("account").get(user__email=LONG_LOCAL_PART)
    assert membership.role == "owner"
    name = membership.account.name
    assert len(name) <= 100
    assert name.startswith("aaaa") and name.endswith("…'s workspace")


def test_a_failed_signup_leaves_no_user_behind(client):
    with connection.cursor() as cursor:  # whatever makes creating the account fail
        cursor.execute(
            "ALTER TABLE accounts_account ADD CONSTRAINT refuse_all CHECK (false) NOT VALID"
        )

    with pytest.raises(IntegrityError):
        sign_up(client)

    assert not User.objects.exists()
    assert not EmailAddress.objects.exists()


def test_a_user_with_a_long_local_part_can_start_an_account(client):
    user = UserFactory(email=LONG_LOCAL_PART)  # left without an account
    client.force_login(user)

    response = client.post(reverse("no-account"))

    assert response["Location"] == reverse("dashboard")
    account = Membership.objects.get(user=user, role="owner").account
    assert len(account.name) <= 100


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"email": "not-an-email"}, "valid email"),
        ({"password1": "short", "password2": "short"}, "too short"),
        ({"password1": "12345678901", "password2": "12345678901"}, "entirely numeric"),
        ({"password2": "something-else-77"}, "same password"),
    ],
)
def test_bad_signup_gets_a_form_error_and_creates_nothing(client, fields, error):
    response = sign_up(client, **fields)
    assert response.status_code == 200
    assert error in response.content.decode().lower()
    assert not User.objects.exists()
    assert mail.outbox == []


def test_signup_with_a_taken_email_answers_like_a_new_one(client):
    fresh = sign_up(client, email="new@example.com")
    UserFactory(email="dana@example.com")
    mail.outbox.clear()

    taken = sign_up(client)

    assert (taken.status_code, taken["Location"]) == (fresh.status_code, fresh["Location"])
    assert "already registered" not in taken.content.decode()
    assert User.objects.filter(email="dana@example.com").count() == 1
    # The mailbox's owner is told, not the person at the form.
    assert [m.to for m in mail.outbox] == [["dana@example.com"]]
    assert "already" in mail.outbox[0].body.lower()


def test_unverified_user_cannot_sign_in_and_is_told_why(client):
    UserFactory(email="erin@example.com", verified=False)
    EmailAddress.objects.create(
        user=User.objects.get(email="erin@example.com"),
        email="erin@example.com",
        verified=False,
        primary=True,
    )
    response = client.post(
        "/accounts/login/", {"login": "erin@example.com", "password": PASSWORD}, follow=True
    )
    assert "verify your email" in response.content.decode().lower()
    assert client.get("/app/").status_code == 302


def test_a_reused_or_bad_verification_link_says_so(client):
    sign_up(client)
    confirm_path = link_in(mail.outbox[0])
    client.post(confirm_path)

    broken = confirm_path.rstrip("/") + "tampered/"
    response = client.get(broken)
    assert response.status_code == 200
    assert "expired or is invalid" in response.content.decode()


def test_password_reset_end_to_end(client):
    UserFactory(email="fay@example.com")
    response = client.post("/accounts/password/reset/", {"email": "fay@example.com"})
    assert response.status_code == 302
    reset_path = link_in(mail.outbox[0])

    response = client.get(reset_path, follow=True)  # allauth swaps the key into the session
    form_path = response.redirect_chain[-1][0] if response.redirect_chain else reset_path
    new_password = "fresh-lantern-orbit-58"
    response = client.post(form_path, {"password1": new_password, "password2": new_password})
    assert response.status_code == 302

    client.logout()
    assert client.login(email="fay@example.com", password=new_password)

    # The link is single-use.
    response = client.get(reset_path, follow=True)
    assert "bad token" in response.content.decode().lower()


def test_password_reset_for_an_unknown_email_answers_like_a_known_one(client):
    UserFactory(email="fay@example.com")
    known = client.post("/accounts/password/reset/", {"email": "fay@example.com"}, follow=True)
    unknown = client.post("/accounts/password/reset/", {"email": "nobody@example.com"}, follow=True)

    assert unknown.status_code == known.status_code == 200
    assert unknown.redirect_chain == known.redirect_chain
    assert unknown.content == known.content
    # Only the mailbox learns whether it has an account: a link for one, a note for the other.
    assert [m.to for m in mail.outbox] == [["fay@example.com"], ["nobody@example.com"]]
    assert "/accounts/password/reset/key/" in mail.outbox[0].body
    assert "/accounts/password/reset/key/" not in mail.outbox[1].body


def test_the_page_after_sign_up_says_where_the_link_went_and_how_to_get_another(client, settings):
    response = sign_up(client, email="fay@example.com")
    page = client.get(response["Location"]).content.decode()
    assert "sent you an email" in page and "spam" in page
    assert "make run" not in page

    # Signing in before verifying sends a new link, as the page says, once the three minutes
    # between two links to one address (ACCOUNT_RATE_LIMITS["confirm_email"]) have passed.
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "confirm_email": None}
    client.post("/accounts/login/", {"login": "fay@example.com", "password": STRONG})
    assert [m.to for m in mail.outbox] == [["fay@example.com"]] * 2


def test_where_emails_are_printed_the_page_after_sign_up_says_so(client, settings):
    """`make run` without EMAIL_URL prints emails in its terminal instead of sending them; the
    page told a newcomer to look in their spam folder."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    response = sign_up(client, email="gus@example.com")
    page = client.get(response["Location"]).content.decode()
    assert "printed in the terminal" in page
    assert "spam" not in page
