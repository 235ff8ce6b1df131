"""Pointing a project's upstream at another host never takes the stored provider key along:
the key is cleared, the change is in the security log and the owners get an email."""

import pytest
from django.contrib import admin
from django.core import mail
from django.test import RequestFactory
from django.urls import reverse

from accounts.models import AuditEvent, Membership
from projects.models import Project, Upstream
from projects.selectors import has_provider_key
from projects.upstreams import provider_key_of
from tests.factories import MembershipFactory, UserFactory
from tests.projects.conftest import PROVIDER_KEY, messages_of, signed_in

pytestmark = pytest.mark.django_db

NEW_KEY = "sk-new-host-provider-key-91c2"


@pytest.fixture
def admin_client(client, bob):
    """bob, promoted to admin: he may edit the upstream but is not an owner."""
    Membership.objects.filter(user=bob).update(role=Membership.Role.ADMIN)
    return signed_in(client, bob)


@pytest.fixture
def second_owner(alice_account):
    user = UserFactory(email="olga@example.com")
    MembershipFactory(user=user, account=alice_account, role="owner")
    return user


def save_upstream(client, project, base_url, **extra):
    return client.post(
        reverse("upstream-edit", args=[project.public_id, "primary"]),
        {"base_url": base_url, **extra},
        follow=True,
    )


def primary_url(project):
    return project.upstreams.get(name="primary").base_url


@pytest.mark.parametrize(
    "new_url",
    [
        "https://collector.attacker.example/v1",  # another name
        "https://api.openai.com:8443/v1",  # another port
        "http://api.openai.com/v1",  # another scheme
    ],
)
def test_a_new_host_clears_the_key_audits_and_mails_the_owners(
    admin_client, alice_project, second_owner, django_capture_on_commit_callbacks, new_url
):
    assert primary_url(alice_project) == "https://api.openai.com/v1"
    with django_capture_on_commit_callbacks(execute=True):
        response = save_upstream(admin_client, alice_project, new_url)

    alice_project.refresh_from_db()
    assert primary_url(alice_project) == new_url
    assert not has_provider_key(alice_project)
    assert provider_key_of(alice_project) is None
    assert alice_project.upstreams.get().provider_key_last4 == ""
    assert any("stored provider key was removed" in m for m in messages_of(response))

    event = AuditEvent.objects.get(action="upstream_host_changed")
    assert event.actor.email == "bob@example.com"
    assert alice_project.public_id in event.target and "provider key cleared" in event.target

    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "olga@example.com"]
    body = mail.outbox[0].body
    assert "https://api.openai.com:443" in body and alice_project.name in body
    assert "bob@example.com" in body
    assert PROVIDER_KEY not in body and PROVIDER_KEY[-4:] not in body
    assert all("Upstream host changed" in m.subject for m in mail.outbox)


def test_the_settings_form_says_a_new_host_needs_the_key_again(admin_client, alice_project):
    page = admin_client.get(reverse("project-detail", args=[alice_project.public_id]))
    text = page.content.decode()
    assert "Changing the host (scheme, name or port) removes the stored provider key" in text


def test_a_key_given_with_the_host_change_is_kept(
    admin_client, alice_project, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        save_upstream(
            admin_client, alice_project, "https://llm.example.net/v1", provider_key=NEW_KEY
        )

    alice_project.refresh_from_db()
    assert provider_key_of(alice_project) == NEW_KEY
    actions = list(
        AuditEvent.objects.filter(action__startswith=("upstream")).values_list("action", flat=True)
    )
    assert actions == ["upstream_host_changed"]
    assert AuditEvent.objects.filter(action="provider_key_set", actor__email="bob@example.com")
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]
    assert "ending in …" + NEW_KEY[-4:] in mail.outbox[0].body


@pytest.mark.parametrize(
    "new_url", ["https://api.openai.com/v2", "https://API.openai.com:443/v1/openai"]
)
def test_a_path_only_change_keeps_the_key(
    admin_client, alice_project, django_capture_on_commit_callbacks, new_url
):
    with django_capture_on_commit_callbacks(execute=True):
        response = save_upstream(admin_client, alice_project, new_url)

    assert "Upstream “primary” saved; its provider key ends in …7f3a." in messages_of(response)
    alice_project.refresh_from_db()
    assert primary_url(alice_project) == new_url
    assert provider_key_of(alice_project) == PROVIDER_KEY
    assert AuditEvent.objects.filter(action="upstream_changed").count() == 1
    assert not AuditEvent.objects.filter(action="upstream_host_changed").exists()
    assert mail.outbox == []


def test_a_bad_key_with_the_host_change_changes_nothing(admin_client, alice_project):
    response = save_upstream(
        admin_client, alice_project, "https://llm.example.net/v1", provider_key="short"
    )
    assert response.status_code == 200
    assert "does not look like a provider API key" in response.content.decode()
    alice_project.refresh_from_db()
    assert primary_url(alice_project) == "https://api.openai.com/v1"
    assert provider_key_of(alice_project) == PROVIDER_KEY


def test_an_operator_moving_the_upstream_in_admin_clears_the_key_too(
    alice_project, django_capture_on_commit_callbacks
):
    project_admin = admin.site._registry[Project]
    request = RequestFactory().post("/admin/", REMOTE_ADDR="203.0.113.50")
    request.user = UserFactory(email="operator@example.com", is_staff=True, is_superuser=True)
    primary = alice_project.upstreams.get()
    inline = next(
        inline
        for inline in project_admin.get_inline_instances(request, alice_project)
        if inline.model is Upstream
    )
    formset = inline.get_formset(request, alice_project)(
        {
            "upstreams-TOTAL_FORMS": "1",
            "upstreams-INITIAL_FORMS": "1",
            "upstreams-0-id": str(primary.pk),
            "upstreams-0-project": str(alice_project.pk),
            "upstreams-0-name": "primary",
            "upstreams-0-position": "0",
            "upstreams-0-base_url": "https://llm.example.net/v1",
            "upstreams-0-model_map": "{}",
            "upstreams-0-enabled": "on",
        },
        instance=alice_project,
        prefix="upstreams",
    )
    assert formset.is_valid(), formset.errors
    with django_capture_on_commit_callbacks(execute=True):
        project_admin.save_formset(request, None, formset, change=True)

    assert primary_url(alice_project) == "https://llm.example.net/v1"
    assert provider_key_of(alice_project) is None
    event = AuditEvent.objects.get(action="upstream_host_changed")
    assert (event.actor.email, event.ip_address) == ("operator@example.com", "203.0.113.50")
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]
    assert "operator@example.com" in mail.outbox[0].body
