"""Projects in the dashboard: create within the plan, rename, settings, provider key, delete;
bad input gets a clear message and changes nothing."""

import pytest
from django.db import connection
from django.urls import reverse

from accounts.models import AuditEvent
from projects.models import Project
from projects.services import provider_key_of
from tests.factories import ProjectFactory
from tests.projects.conftest import PROVIDER_KEY, messages_of

pytestmark = pytest.mark.django_db

POLICY = {"max_attempts": "", "attempt_timeout_seconds": "30", "deadline_seconds": "300"}


def settings_url(project, action="project-detail"):
    return reverse(action, args=[project.public_id])


def test_create_project_then_settings_page(alice_client, alice_account):
    response = alice_client.post(reverse("project-list"), {"name": "  Support bot  "}, follow=True)
    project = Project.objects.get(account=alice_account)
    assert project.name == "Support bot"
    assert project.public_id.startswith("prj_")
    assert response.redirect_chain[-1][0] == settings_url(project)
    assert any("created" in message for message in messages_of(response))
    assert b"No provider key yet" in response.content


def test_empty_state_says_what_to_do(alice_client, alice_account):
    page = alice_client.get(reverse("project-list")).content.decode()
    assert "No projects yet" in page and "Create one below" in page
    assert "Create your first project" in alice_client.get(reverse("dashboard")).content.decode()


def test_free_plan_refuses_a_second_project_naming_the_limit(alice_client, alice_project):
    response = alice_client.post(reverse("project-list"), {"name": "Second"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "The Free plan allows 1 project." in page
    assert f'href="{reverse("pricing")}"' in page
    assert Project.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "Give the project a name."),
        ("   ", "Give the project a name."),
        ("chatbot", "Another project is already named “chatbot”."),
    ],
)
def test_bad_project_names_are_refused(alice_client, alice_account, alice_project, name, error):
    from projects.limits import set_plan

    set_plan(account=alice_account, plan_code="pro")  # room for a second project
    response = alice_client.post(reverse("project-list"), {"name": name})
    assert error in response.content.decode()
    assert list(Project.objects.values_list("name", flat=True)) == ["Chatbot"]


def test_rename(alice_client, alice_account, alice_project):
    other = ProjectFactory(account=alice_account, name="Other")
    response = alice_client.post(settings_url(alice_project, "project-rename"), {"name": "Other"})
    assert "Another project is already named “Other”." in response.content.decode()
    response = alice_client.post(settings_url(alice_project, "project-rename"), {"name": ""})
    assert "Give the project a name." in response.content.decode()
    alice_project.refresh_from_db()
    assert alice_project.name == "Chatbot"

    response = alice_client.post(
        settings_url(other, "project-rename"), {"name": "Renamed"}, follow=True
    )
    other.refresh_from_db()
    assert other.name == "Renamed"
    assert "Project renamed to “Renamed”." in messages_of(response)


def test_upstream_and_retry_policy(alice_client, alice_project):
    data = {
        "upstream_base_url": "http://127.0.0.1:8080/v1/",
        "max_attempts": "3",
        "attempt_timeout_seconds": "20",
        "deadline_seconds": "120",
        "zero_retention": "on",
    }
    response = alice_client.post(settings_url(alice_project, "project-upstream"), data, follow=True)
    assert "Upstream and retry policy saved." in messages_of(response)
    alice_project.refresh_from_db()
    assert alice_project.upstream_base_url == "http://127.0.0.1:8080/v1"
    assert (
        alice_project.max_attempts,
        alice_project.attempt_timeout_seconds,
        alice_project.deadline_seconds,
        alice_project.zero_retention,
    ) == (3, 20, 120, True)
    # Another host: the stored key is not sent there (tests/projects/test_upstream_host.py).
    assert AuditEvent.objects.filter(action="upstream_host_changed").exists()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"upstream_base_url": "not a url"}, "Enter a full base URL"),
        ({"upstream_base_url": "ftp://example.com/v1"}, "Enter a full base URL"),
        ({"upstream_base_url": "https://user:pw@example.com/v1"}, "must not contain credentials"),
        ({"upstream_base_url": "http://api.example.com/v1"}, "must use https"),
        ({"upstream_base_url": "https://127.0.0.1/v1"}, "private, loopback or link-local"),
        ({"upstream_base_url": "https://10.1.2.3/v1"}, "private, loopback or link-local"),
        ({"upstream_base_url": "https://169.254.169.254/v1"}, "private, loopback or link-local"),
        ({"upstream_base_url": "https://[::1]/v1"}, "private, loopback or link-local"),
        ({"max_attempts": "4"}, "Your plan allows at most 3 attempts."),
        ({"max_attempts": "0"}, "greater than or equal to 1"),
        ({"attempt_timeout_seconds": "0"}, "greater than or equal to 1"),
        ({"attempt_timeout_seconds": "60", "deadline_seconds": "30"}, "at least one attempt"),
    ],
)
def test_bad_upstream_settings_are_refused(alice_client, alice_project, settings, changes, error):
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = False
    before = Project.objects.values().get(pk=alice_project.pk)
    data = {"upstream_base_url": "https://api.openai.com/v1", **POLICY, **changes}
    response = alice_client.post(settings_url(alice_project, "project-upstream"), data)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert Project.objects.values().get(pk=alice_project.pk) == before


def test_provider_key_set_replace_remove(alice_client, alice, alice_account):
    project = ProjectFactory(account=alice_account)
    url = settings_url(project, "provider-key-set")
    response = alice_client.post(url, {"provider_key": " sk-first-key-0001 "}, follow=True)
    assert "Provider key saved, encrypted; it ends in …0001." in messages_of(response)
    response = alice_client.post(url, {"provider_key": "sk-second-key-0002"}, follow=True)
    assert "Provider key replaced, encrypted; it ends in …0002." in messages_of(response)
    page = response.content.decode()
    assert "…0002" in page and "sk-second-key" not in page
    project.refresh_from_db()
    assert provider_key_of(project) == "sk-second-key-0002"

    response = alice_client.post(settings_url(project, "provider-key-remove"), follow=True)
    project.refresh_from_db()
    assert not project.has_provider_key and project.provider_key_last4 == ""
    assert "No provider key yet" in response.content.decode()
    actions = list(
        AuditEvent.objects.filter(account=alice_account, target=project.public_id)
        .order_by("created_at")
        .values_list("action", flat=True)
    )
    assert actions == ["provider_key_set", "provider_key_changed", "provider_key_removed"]


@pytest.mark.parametrize("bad_key", ["", "short", "sk-has a space in it"])
def test_bad_provider_key_is_refused(alice_client, alice_project, bad_key):
    before = bytes(Project.objects.get(pk=alice_project.pk).provider_key_encrypted)
    response = alice_client.post(
        settings_url(alice_project, "provider-key-set"), {"provider_key": bad_key}
    )
    page = response.content.decode()
    assert "Paste the provider" in page or "does not look like a provider API key" in page
    alice_project.refresh_from_db()
    assert bytes(alice_project.provider_key_encrypted) == before
    assert provider_key_of(alice_project) == PROVIDER_KEY


def test_provider_key_column_holds_no_plaintext(alice_project):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT provider_key_encrypted, provider_key_last4 FROM projects_project WHERE id = %s",
            [alice_project.pk],
        )
        ciphertext, last4 = cursor.fetchone()
    assert PROVIDER_KEY.encode() not in bytes(ciphertext)
    assert PROVIDER_KEY[:-4].encode() not in bytes(ciphertext)
    assert last4 == PROVIDER_KEY[-4:]


def test_delete_asks_first(alice_client, alice_project, alice_key):
    url = settings_url(alice_project, "project-delete")
    confirmation = alice_client.get(url)
    assert confirmation.status_code == 200
    assert "Delete “Chatbot”?" in confirmation.content.decode()
    assert Project.objects.filter(pk=alice_project.pk).exists()

    response = alice_client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == reverse("project-list")
    assert not Project.objects.filter(pk=alice_project.pk).exists()
    assert "Project “Chatbot” and its API keys were deleted." in messages_of(response)
    assert AuditEvent.objects.filter(action="project_deleted").exists()
