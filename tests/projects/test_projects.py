"""Projects in the dashboard: create within the plan, rename, settings, provider key, delete;
bad input gets a clear message and changes nothing."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from projects.errors import ProjectBusy
from projects.limits import accepted_requests
from projects.models import ApiKey, Project, Upstream
from projects.services import (
    create_project,
    delete_project,
    purge_deleted_project,
    revoke_api_key,
)
from projects.upstreams import (
    add_upstream,
    provider_key_of,
    remove_upstream,
    remove_upstream_key,
)
from requests_app.models import DailyUsage, Request
from tests.conftest import raised_while_held
from tests.factories import MonthlyUsageFactory, ProjectFactory, RequestFactory
from tests.markup import duplicate_ids
from tests.projects.conftest import PROVIDER_KEY, messages_of, signed_in

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


def rename_form_of(page: str, project) -> str:
    return page.split(f'action="{settings_url(project, "project-rename")}"')[1].split("</form>")[0]


def test_rename(alice_client, alice_account, alice_project):
    other = ProjectFactory(account=alice_account, name="Other")
    rename_url = settings_url(alice_project, "project-rename")
    # The form's fields carry a prefix: the page's add-upstream form has a "name" field too.
    response = alice_client.post(rename_url, {"rename-name": "Other"})
    page = response.content.decode()
    assert "Another project is already named “Other”." in rename_form_of(page, alice_project)
    assert duplicate_ids(page) == []
    response = alice_client.post(rename_url, {"rename-name": ""})
    assert "Give the project a name." in rename_form_of(response.content.decode(), alice_project)
    alice_project.refresh_from_db()
    assert alice_project.name == "Chatbot"

    response = alice_client.post(
        settings_url(other, "project-rename"), {"rename-name": "Renamed"}, follow=True
    )
    other.refresh_from_db()
    assert other.name == "Renamed"
    assert "Project renamed to “Renamed”." in messages_of(response)


def upstream_url(project, action="upstream-edit", name="primary"):
    return reverse(action, args=[project.public_id, name])


def test_the_settings_page_has_no_duplicate_ids(alice_client, alice_project):
    # Its forms (add an upstream, rename the project, ...) each have a "name" field.
    page = alice_client.get(settings_url(alice_project)).content.decode()
    assert 'action="' + settings_url(alice_project, "upstream-add") in page
    assert 'action="' + settings_url(alice_project, "project-rename") in page
    assert duplicate_ids(page) == []


def test_the_missing_provider_key_banner_links_to_where_it_is_added(
    alice_client, alice_account, bob
):
    project = create_project(account=alice_account, name="Keyless")  # its primary has no key
    page = alice_client.get(settings_url(project)).content.decode()
    banner = page.split("No provider key yet")[1].split("</div>")[0]
    assert f'<a href="{upstream_url(project)}">' in banner
    assert alice_client.get(upstream_url(project)).status_code == 200

    # A member cannot edit upstreams: the banner names who can instead of a link they can't use.
    alice_client.force_login(bob)
    page = alice_client.get(settings_url(project)).content.decode()
    banner = page.split("No provider key yet")[1].split("</div>")[0]
    assert "href" not in banner and "an owner or admin" in banner


def test_upstream_and_retry_policy(alice_client, alice_project):
    data = {"base_url": "http://127.0.0.1:8080/v1/", "model_map": "", "provider_key": ""}
    response = alice_client.post(upstream_url(alice_project), data, follow=True)
    assert "Upstream “primary” saved." in messages_of(response)
    policy = {
        "max_attempts": "3",
        "attempt_timeout_seconds": "20",
        "deadline_seconds": "120",
        "zero_retention": "on",
    }
    response = alice_client.post(settings_url(alice_project, "project-policy"), policy, follow=True)
    assert "Retry policy saved." in messages_of(response)
    alice_project.refresh_from_db()
    assert alice_project.upstreams.get().base_url == "http://127.0.0.1:8080/v1"
    assert (
        alice_project.max_attempts,
        alice_project.attempt_timeout_seconds,
        alice_project.deadline_seconds,
        alice_project.zero_retention,
    ) == (3, 20, 120, True)
    # Another host: the stored key is not sent there (tests/projects/test_upstream_host.py).
    assert AuditEvent.objects.filter(action="upstream_host_changed").exists()


def upstream_rows(project):
    return list(project.upstreams.values().order_by("pk"))


@pytest.mark.parametrize(
    ("base_url", "error"),
    [
        ("not a url", "Enter a full base URL"),
        ("ftp://example.com/v1", "Enter a full base URL"),
        ("https://user:pw@example.com/v1", "must not contain credentials"),
        ("http://api.example.com/v1", "must use https"),
        ("https://127.0.0.1/v1", "private, loopback or link-local"),
        ("https://10.1.2.3/v1", "private, loopback or link-local"),
        ("https://169.254.169.254/v1", "private, loopback or link-local"),
        ("https://[::1]/v1", "private, loopback or link-local"),
    ],
)
def test_bad_upstream_urls_are_refused(alice_client, alice_project, settings, base_url, error):
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = False
    before = upstream_rows(alice_project)
    response = alice_client.post(upstream_url(alice_project), {"base_url": base_url})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert upstream_rows(alice_project) == before


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"max_attempts": "4"}, "Your plan allows at most 3 attempts."),
        ({"max_attempts": "0"}, "greater than or equal to 1"),
        ({"attempt_timeout_seconds": "0"}, "greater than or equal to 1"),
        ({"attempt_timeout_seconds": "60", "deadline_seconds": "30"}, "at least one attempt"),
    ],
)
def test_bad_retry_policy_is_refused(alice_client, alice_project, changes, error):
    before = Project.objects.values().get(pk=alice_project.pk)
    data = {**POLICY, **changes}
    response = alice_client.post(settings_url(alice_project, "project-policy"), data)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert Project.objects.values().get(pk=alice_project.pk) == before


def test_provider_key_set_replace_remove(alice_client, alice, alice_account):
    project = ProjectFactory(account=alice_account)
    project.upstreams.create(name="primary", base_url="https://api.openai.com/v1")
    url = upstream_url(project)
    data = {"base_url": "https://api.openai.com/v1"}
    response = alice_client.post(url, {**data, "provider_key": " sk-first-key-0001 "}, follow=True)
    assert "Upstream “primary” saved; its provider key ends in …0001." in messages_of(response)
    response = alice_client.post(url, {**data, "provider_key": "sk-second-key-0002"}, follow=True)
    assert "Upstream “primary” saved; its provider key ends in …0002." in messages_of(response)
    page = response.content.decode()
    assert "…0002" in page and "sk-second-key" not in page
    assert provider_key_of(project.upstreams.get()) == "sk-second-key-0002"

    response = alice_client.post(upstream_url(project, "provider-key-remove"), follow=True)
    upstream = project.upstreams.get()
    assert not upstream.has_provider_key and upstream.provider_key_last4 == ""
    assert "No provider key yet" in response.content.decode()
    actions = list(
        AuditEvent.objects.filter(account=alice_account, target=f"{project.public_id} primary")
        .order_by("created_at")
        .values_list("action", flat=True)
    )
    assert actions == ["provider_key_set", "provider_key_changed", "provider_key_removed"]


@pytest.mark.parametrize("bad_key", ["short", "sk-has a space in it"])
def test_bad_provider_key_is_refused(alice_client, alice_project, bad_key):
    before = upstream_rows(alice_project)
    response = alice_client.post(
        upstream_url(alice_project),
        {"base_url": "https://api.openai.com/v1", "provider_key": bad_key},
    )
    assert "does not look like a provider API key" in response.content.decode()
    assert upstream_rows(alice_project) == before
    assert provider_key_of(alice_project.upstreams.get()) == PROVIDER_KEY


def test_provider_key_column_holds_no_plaintext(alice_project):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT provider_key_encrypted, provider_key_last4 FROM projects_upstream "
            "WHERE project_id = %s",
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
    assert Project.objects.get(pk=alice_project.pk).deleted_at is not None  # purged later
    assert (
        "Project “Chatbot” was deleted. Its API keys no longer work; its request history is "
        "being deleted in the background."
    ) in messages_of(response)
    assert AuditEvent.objects.filter(action="project_deleted").exists()


def test_the_delete_page_says_the_request_history_goes_and_the_quota_keeps_it(
    alice_client, alice_project
):
    finished = RequestFactory(project=alice_project, status="succeeded", finished_at=timezone.now())
    DailyUsage.objects.create(
        account=alice_project.account, project=alice_project, day=timezone.now().date()
    )
    used = MonthlyUsageFactory(account=alice_project.account, accepted_requests=7)
    url = settings_url(alice_project, "project-delete")

    page = " ".join(alice_client.get(url).content.decode().split())
    alice_client.post(url)
    later = timezone.now() + timedelta(minutes=1)
    assert purge_deleted_project(project_pk=alice_project.pk, now=later)  # the worker's part

    assert "its request history (every request and its attempts) and its usage totals" in page
    assert "deleted in the background, usually within a minute" in page
    assert "still count toward this month's quota" in page
    assert not Request.objects.filter(pk=finished.pk).exists()
    assert not DailyUsage.objects.filter(project_id=alice_project.pk).exists()
    assert accepted_requests(used.account) == 7


@pytest.mark.parametrize("status", ["queued", "retrying", "running"])
def test_a_project_whose_requests_have_not_finished_is_kept(alice_client, alice_project, status):
    # Deleting it would cascade past the engine: their pending slots would never be freed.
    RequestFactory(project=alice_project, status=status)
    RequestFactory(project=alice_project, status="succeeded", finished_at=timezone.now())

    response = alice_client.post(settings_url(alice_project, "project-delete"), follow=True)

    assert Project.objects.filter(pk=alice_project.pk).exists()
    assert any("1 of its requests has not finished" in text for text in messages_of(response))
    assert not AuditEvent.objects.filter(action="project_deleted").exists()


@pytest.mark.django_db(transaction=True)
def test_a_request_accepted_while_the_project_is_deleted_is_counted_or_refused(alice_project):
    # The accept's insert holds the project row (its foreign key) until it commits; the
    # delete must wait for it and then count it, not cascade past it.
    def accept_in_flight():
        connection.cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")
        RequestFactory(project=alice_project, status="queued")

    raised = raised_while_held(
        accept_in_flight, lambda: delete_project(project=Project.objects.get(pk=alice_project.pk))
    )

    assert isinstance(raised, ProjectBusy), raised
    assert Project.objects.filter(pk=alice_project.pk).exists()


@pytest.mark.parametrize(
    "url, keyless_marker", [("dashboard", "Add the provider key for"), ("project-list", "Not set")]
)
def test_the_project_tables_read_every_projects_key_state_in_one_query(
    alice_client, alice_account, alice_project, url, keyless_marker
):
    def queries_and_page():
        with CaptureQueriesContext(connection) as captured:
            page = alice_client.get(reverse(url)).content.decode()
        return len(captured), page

    queries_and_page()  # the first page of a session reads what later ones find cached
    one, page = queries_and_page()
    assert keyless_marker not in page  # alice's project has its key
    ProjectFactory.create_batch(2, account=alice_account)  # no upstream, so no key
    three, page = queries_and_page()

    assert three == one
    assert page.count(keyless_marker) == 2


POLICY_FORM = {"max_attempts": "2", "attempt_timeout_seconds": "30", "deadline_seconds": "60"}
# Every change the dashboard makes to a project, its upstreams and its keys.
PROJECT_CHANGES = [
    ("project-rename", {"rename-name": "Renamed"}),
    ("project-policy", POLICY_FORM),
    ("project-failover", {"failover_on": ["timeout"], "tries_per_upstream": "2"}),
    ("upstream-add", {"name": "another", "base_url": "http://127.0.0.1:9/v1"}),
    ("upstream-edit", {"base_url": "http://127.0.0.1:9/v2"}),
    ("provider-key-remove", {}),
    ("upstream-move", {"direction": "up"}),
    ("upstream-enabled", {}),
    ("upstream-remove", {}),
    ("api-key-list", {"name": "staging"}),
    ("api-key-revoke", {}),
    ("project-delete", {}),
]


@pytest.fixture
def with_a_fallback(alice, alice_project, alice_key, on_pro):
    """alice's project with a second upstream, which has a provider key, and an API key."""
    add_upstream(
        project=alice_project,
        name="fallback",
        base_url="http://127.0.0.1:9/v1",
        provider_key="sk-test-fallback-key-0042",
        actor=alice,
    )
    return alice_project, alice_key


def fallback(project) -> Upstream:
    return Upstream.objects.get(project=project, name="fallback")


def project_change_url(name, project, api_key) -> str:
    kwargs = {"project_id": project.public_id}
    if name.startswith(("upstream-", "provider-")) and name != "upstream-add":
        kwargs["upstream_name"] = "fallback"
    if name == "api-key-revoke":
        kwargs["key_id"] = api_key.public_id
    return reverse(name, kwargs=kwargs)


@pytest.mark.parametrize(("name", "data"), PROJECT_CHANGES)
def test_a_change_to_a_project_deleted_meanwhile_is_a_404_and_changes_nothing(
    transactional_db, alice, with_a_fallback, name, data
):
    # The page was loaded, then another admin's delete (or the first click of a double
    # click on Delete) held the project until it was gone.
    project, api_key = with_a_fallback
    client = signed_in(Client(), alice)
    audited = AuditEvent.objects.count()
    answers = []

    def rows():  # all but what the deletion itself changes (the project's mark, keys revoked)
        return (
            list(Project.objects.values_list("name", "max_attempts", "failover_on")),
            list(Upstream.objects.order_by("pk").values_list("name", "position", "base_url")),
            list(Upstream.objects.order_by("pk").values_list("enabled", "provider_key_last4")),
            list(ApiKey.objects.order_by("pk").values_list("name", flat=True)),
        )

    before = rows()
    raised = raised_while_held(
        lambda: delete_project(project=Project.objects.get(pk=project.pk), actor=alice),
        lambda: answers.append(client.post(project_change_url(name, project, api_key), data)),
    )

    assert raised is None, raised
    assert answers[0].status_code == 404
    assert Project.objects.get(pk=project.pk).deleted_at is not None  # its rows: a worker's job
    assert rows() == before
    new_events = AuditEvent.objects.order_by("pk")[audited:]
    assert [event.action for event in new_events] == ["project_deleted"]


@pytest.mark.parametrize(
    ("name", "first_click", "action"),
    [
        (
            "upstream-remove",
            lambda project, api_key: remove_upstream(upstream=fallback(project)),
            "upstream_removed",
        ),
        (
            "provider-key-remove",
            lambda project, api_key: remove_upstream_key(upstream=fallback(project)),
            "provider_key_removed",
        ),
        (
            "api-key-revoke",
            lambda project, api_key: revoke_api_key(api_key=ApiKey.objects.get(pk=api_key.pk)),
            "api_key_revoked",
        ),
    ],
)
def test_a_double_click_changes_once(
    transactional_db, alice, with_a_fallback, name, first_click, action
):
    # The second click's page found the upstream or key as it was, then waited for the
    # project's lock while the first click changed it.
    project, api_key = with_a_fallback
    client = signed_in(Client(), alice)

    raised = raised_while_held(
        lambda: first_click(project, api_key),
        lambda: client.post(project_change_url(name, project, api_key)),
    )

    assert raised is None, raised
    assert AuditEvent.objects.filter(action=action).count() == 1
