"""Every page a visitor or a signed-in user can reach, allauth's included, as a browser would
build it: no block inside a <p>, no empty <p></p>, no id used twice (tests/markup.py)."""

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from projects.members import invitation_token
from projects.upstreams import set_provider_key
from tests.accounts.test_signup import link_in, sign_up
from tests.accounts.test_two_factor import confirm_password, current_code, sign_in_with_password
from tests.conftest import PUBLIC_PAGES
from tests.factories import (
    PASSWORD,
    AccountExportFactory,
    ApiKeyFactory,
    AttemptFactory,
    InvitationFactory,
    ProjectFactory,
    RequestFactory,
    UserFactory,
)
from tests.markup import duplicate_ids, paragraph_faults

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "violet-kettle-harbor-91"


def faults(response) -> list[str]:
    assert response.status_code in (200, 400, 403), response.status_code
    page = response.content.decode()
    return paragraph_faults(page) + [f"id {name} twice" for name in duplicate_ids(page)]


def faults_of(pages: dict) -> dict:
    return {name: found for name, response in pages.items() if (found := faults(response))}


def test_the_pages_of_a_signed_out_visitor_nest_their_markup_validly(client, alice):
    pages = {url: client.get(url) for url in PUBLIC_PAGES}
    for url in ("/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"):
        pages[url] = client.get(url)
    pages["login refused"] = client.post("/accounts/login/", {"login": alice.email})
    pages["reset refused"] = client.post("/accounts/password/reset/", {"email": "not-an-email"})
    pages["reset sent"] = client.post(
        "/accounts/password/reset/", {"email": alice.email}, follow=True
    )
    reset_link = link_in(mail.outbox[-1])
    reset_form = client.get(reset_link, follow=True)
    pages["reset from key"] = reset_form
    form_path = reset_form.redirect_chain[-1][0]
    pages["reset from key refused"] = client.post(
        form_path, {"password1": NEW_PASSWORD, "password2": "something-else-77"}
    )
    pages["bad reset key"] = client.get("/accounts/password/reset/key/1-bad/", follow=True)
    signed_up = sign_up(client, password1=NEW_PASSWORD, password2=NEW_PASSWORD)
    pages["verification sent"] = client.get(signed_up["Location"])
    pages["confirm email"] = client.get(link_in(mail.outbox[-1]))
    pages["bad confirm email"] = client.get("/accounts/confirm-email/bad/")

    assert faults_of(pages) == {}


@pytest.fixture
def workspace(alice, alice_account, bob):
    """alice's account with a project, an API key, a request with an attempt, an export and
    an invitation for dana, who has no account yet."""
    project = set_provider_key(
        project=ProjectFactory(account=alice_account, name="Chatbot"),
        provider_key="sk-test-alice-provider-key-7f3a",
        actor=alice,
    )
    api_key = ApiKeyFactory(project=project, name="production", actor=alice)
    record = RequestFactory(project=project, status="succeeded")
    AttemptFactory(request=record, number=1)
    AccountExportFactory(account=alice_account, requested_by=alice)
    invitation = InvitationFactory(
        account=alice_account, email="dana@example.com", invited_by=alice
    )
    return project, api_key, record, invitation


def test_the_pages_of_a_signed_in_user_nest_their_markup_validly(alice, bob, workspace):
    project, api_key, record, invitation = workspace
    client = Client()
    sign_in_with_password(client, alice)
    urls = [
        reverse("dashboard"),
        reverse("project-list"),
        reverse("project-detail", args=[project.public_id]),
        reverse("upstream-edit", args=[project.public_id, "primary"]),
        reverse("project-delete", args=[project.public_id]),
        reverse("api-key-list", args=[project.public_id]),
        reverse("api-key-revoke", args=[project.public_id, api_key.public_id]),
        reverse("request-list", args=[project.public_id]),
        reverse("request-detail", args=[record.public_id]),
        reverse("usage"),
        reverse("member-list"),
        reverse("member-remove") + "?email=bob@example.com",
        reverse("member-leave"),
        reverse("account"),
        reverse("security-log"),
        reverse("privacy-export"),
        reverse("privacy-delete-account"),
        reverse("billing"),
        "/accounts/email/",
        "/accounts/password/change/",
        "/accounts/sessions/",
        "/accounts/reauthenticate/",
        "/accounts/logout/",
        "/accounts/2fa/",
        *PUBLIC_PAGES,
    ]
    pages = {url: client.get(url) for url in urls}
    pages["password change refused"] = client.post(
        "/accounts/password/change/",
        {"oldpassword": "wrong", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    pages["email refused"] = client.post("/accounts/email/", {"action_add": "", "email": "x"})
    pages["project refused"] = client.post(reverse("project-list"), {"name": " "})
    pages["key created"] = client.post(
        reverse("api-key-list", args=[project.public_id]), {"name": "staging"}
    )
    pages["delete refused"] = client.post(
        reverse("privacy-delete-account"), {"account": "acc_x", "password": "wrong"}
    )
    pages["two-factor set-up"] = confirm_password(client, next_url="/accounts/2fa/totp/activate/")
    secret = pages["two-factor set-up"].context["form"].secret
    pages["two-factor code refused"] = client.post("/accounts/2fa/totp/activate/", {"code": "1"})
    pages["recovery codes"] = client.post(
        "/accounts/2fa/totp/activate/", {"code": current_code(secret)}, follow=True
    )
    pages["two-factor off"] = client.get("/accounts/2fa/totp/deactivate/")
    second_sign_in = Client()
    sign_in_with_password(second_sign_in, alice)
    pages["two-factor code"] = second_sign_in.get("/accounts/2fa/authenticate/")
    pages["two-factor code wrong"] = second_sign_in.post(
        "/accounts/2fa/authenticate/", {"code": "1"}
    )

    bob_client = Client()
    bob_client.force_login(bob)
    pages["refused to a member"] = bob_client.get(reverse("security-log"))
    dana_client = Client()
    dana_client.force_login(UserFactory(email="dana@example.com", password=PASSWORD))
    pages["no account"] = dana_client.get(reverse("no-account"))
    pages["invitation"] = dana_client.get(
        reverse("invitation-accept", args=[invitation_token(invitation)])
    )

    assert faults_of(pages) == {}
