"""Tenancy by construction: another tenant's ids are 404 on every dashboard URL, and a
plain member can read but every manage action is refused and changes nothing."""

import pytest
from django.test import Client
from django.urls import URLPattern, reverse

from accounts.models import AuditEvent, Membership
from accounts.urls import urlpatterns as account_urls
from privacy.models import AccountExport
from projects.models import ApiKey, Invitation, Project, Upstream
from projects.services import delete_project
from projects.urls import urlpatterns as project_urls
from tests.conftest import raised_while_held
from tests.factories import AccountFactory, MembershipFactory, RequestFactory, UserFactory

pytestmark = pytest.mark.django_db

POLICY = {
    "max_attempts": "2",
    "attempt_timeout_seconds": "30",
    "deadline_seconds": "60",
    "zero_retention": "on",
}
UPSTREAM = {
    "base_url": "http://127.0.0.1:9/v1",
    "provider_key": "sk-someone-else-0000",
    "model_map": "gpt-4o=theirs",
}

# Every URL that names one of alice's objects, with what a request to it carries.
OBJECT_REQUESTS = [
    ("project-detail", "get", {}),
    ("project-rename", "post", {"rename-name": "Taken over"}),
    ("project-policy", "post", POLICY),
    (
        "project-failover",
        "post",
        {"failover_on": ["timeout"], "tries_per_upstream": "3", "return_to_primary": ""},
    ),
    ("upstream-add", "post", {**UPSTREAM, "name": "intruder"}),
    ("upstream-edit", "get", {}),
    ("upstream-edit", "post", UPSTREAM),
    ("provider-key-remove", "post", {}),
    ("upstream-move", "post", {"direction": "down"}),
    ("upstream-enabled", "post", {}),
    ("upstream-remove", "post", {}),
    ("project-delete", "get", {}),
    ("project-delete", "post", {}),
    ("api-key-list", "get", {}),
    ("api-key-list", "post", {"name": "intruder"}),
    ("api-key-revoke", "get", {}),
    ("api-key-revoke", "post", {}),
    ("member-role", "post", {"email": "bob@example.com", "role": "owner"}),
    ("member-remove", "get", {"email": "bob@example.com"}),
    ("member-remove", "post", {"email": "bob@example.com"}),
    ("invitation-revoke", "post", {}),
    ("switch-account", "post", {}),
]
# URLs about "the current account" (always one of the user's own) or carrying a token.
ACCOUNT_LEVEL = {
    "dashboard",
    "project-list",
    "member-list",
    "member-invite",
    "member-leave",
    "account",
    "security-log",
    "invitation-accept",
    "no-account",
}
MANAGE_REQUESTS = [
    ("project-list", "post", {"name": "Second"}),
    *[case for case in OBJECT_REQUESTS if case[1] == "post" and case[0] not in ("switch-account",)],
    ("member-invite", "post", {"email": "eve@example.com", "role": "admin"}),
]
READ_PAGES = {  # page: something of alice's account it shows
    "dashboard": "Chatbot",
    "project-list": "Chatbot",
    "project-detail": "…7f3a",
    "api-key-list": "production",
    "member-list": "alice@example.com",
    "account": "Alice&#x27;s workspace",
}


def url_of(name, project, api_key, invitation, account):
    kwargs = {
        "project_id": project.public_id,
        "key_id": api_key.public_id,
        "invitation_id": invitation.public_id,
        "upstream_name": "primary",
    }
    pattern = next(p for p in [*project_urls, *account_urls] if p.name == name)
    needed = pattern.pattern.converters.keys()
    return reverse(name, kwargs={key: kwargs[key] for key in needed})


def send(client, method, url, data):
    return client.get(url, data) if method == "get" else client.post(url, data)


def snapshot(account):
    """Everything a refused request must leave as it was."""
    return {
        "projects": list(
            Project.objects.filter(account=account)
            .order_by("pk")
            .values_list(
                "public_id",
                "name",
                "max_attempts",
                "zero_retention",
                "failover_on",
                "failover_tries_per_upstream",
                "failover_return_to_primary",
            )
        ),
        "upstreams": list(
            Upstream.objects.filter(project__account=account)
            .order_by("pk")
            .values_list(
                "name",
                "position",
                "base_url",
                "provider_key_encrypted",
                "provider_key_last4",
                "model_map",
                "enabled",
            )
        ),
        "keys": list(
            ApiKey.objects.filter(project__account=account)
            .order_by("pk")
            .values_list("public_id", "name", "revoked_at")
        ),
        "members": list(
            Membership.objects.filter(account=account)
            .order_by("pk")
            .values_list("user__email", "role")
        ),
        "invitations": list(
            Invitation.objects.filter(account=account)
            .order_by("pk")
            .values_list("email", "accepted_at", "revoked_at")
        ),
        "audit": AuditEvent.objects.filter(account=account).exclude(action="sign_in").count(),
    }


@pytest.fixture
def alice_objects(alice_account, alice_project, alice_key, alice_invitation, bob):
    return alice_project, alice_key, alice_invitation, alice_account


def test_every_dashboard_url_is_covered_here():
    names = {p.name for p in [*project_urls, *account_urls] if isinstance(p, URLPattern)}
    assert names == {name for name, _, _ in OBJECT_REQUESTS} | ACCOUNT_LEVEL


@pytest.mark.parametrize(("name", "method", "data"), OBJECT_REQUESTS)
def test_another_tenant_gets_404_and_changes_nothing(
    charlie_client, alice_objects, name, method, data
):
    project, api_key, invitation, account = alice_objects
    if name == "switch-account":
        data = {"account": account.public_id}
    before = snapshot(account)
    response = send(charlie_client, method, url_of(name, *alice_objects), data)
    assert response.status_code == 404
    assert snapshot(account) == before


def test_another_tenant_sees_only_their_own_account(charlie_client, alice_objects):
    project, api_key, invitation, account = alice_objects
    for name in ("dashboard", "project-list", "member-list"):
        page = charlie_client.get(reverse(name)).content.decode()
        assert project.name not in page and project.public_id not in page
        assert "alice@example.com" not in page and "bob@example.com" not in page
    charlie_client.post(reverse("project-list"), {"name": "Charlie's"})
    assert list(account.projects.values_list("name", flat=True)) == ["Chatbot"]


def names_a_project(name: str) -> bool:
    pattern = next(p for p in [*project_urls, *account_urls] if p.name == name)
    return "project_id" in pattern.pattern.converters


@pytest.mark.parametrize(
    ("name", "method", "data"), [case for case in OBJECT_REQUESTS if names_a_project(case[0])]
)
def test_a_deleted_projects_urls_are_404_to_its_owner_and_change_nothing(
    alice_client, alice, alice_objects, name, method, data
):
    project, api_key, invitation, account = alice_objects
    delete_project(project=project, actor=alice)  # its rows stay until a worker purges them
    before = snapshot(account)
    response = send(alice_client, method, url_of(name, *alice_objects), data)
    assert response.status_code == 404
    assert snapshot(account) == before


@pytest.mark.parametrize(("name", "shown"), READ_PAGES.items())
def test_member_can_read(bob_client, alice_objects, name, shown):
    response = bob_client.get(url_of(name, *alice_objects))
    assert response.status_code == 200
    assert shown in response.content.decode()


@pytest.mark.parametrize(("name", "method", "data"), MANAGE_REQUESTS)
def test_member_cannot_manage_and_nothing_changes(bob_client, alice_objects, name, method, data):
    account = alice_objects[-1]
    before = snapshot(account)
    response = send(bob_client, method, url_of(name, *alice_objects), data)
    assert response.status_code == 403
    assert "Only owners" in response.content.decode()
    assert snapshot(account) == before


@pytest.mark.parametrize(
    "name", ["project-delete", "api-key-revoke", "member-remove", "security-log", "upstream-edit"]
)
def test_member_does_not_get_manage_pages(bob_client, alice_objects, name):
    response = bob_client.get(url_of(name, *alice_objects), {"email": "bob@example.com"})
    assert response.status_code == 403


def test_member_pages_hide_manage_controls(bob_client, alice_objects):
    project = alice_objects[0]
    settings_page = bob_client.get(reverse("project-detail", args=[project.public_id]))
    assert b"Delete project" not in settings_page.content
    assert b'name="provider_key"' not in settings_page.content
    members_page = bob_client.get(reverse("member-list"))
    assert b"Send invitation" not in members_page.content


def test_admin_manages_projects_but_not_members(bob_client, bob, alice_objects):
    project, api_key, invitation, account = alice_objects
    Membership.objects.filter(user=bob).update(role=Membership.Role.ADMIN)
    response = bob_client.post(
        reverse("project-rename", args=[project.public_id]), {"rename-name": "Renamed by an admin"}
    )
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.name == "Renamed by an admin"

    before = snapshot(account)
    response = bob_client.post(
        reverse("member-invite"), {"email": "eve@example.com", "role": "owner"}
    )
    assert response.status_code == 403
    response = bob_client.post(
        reverse("member-role"), {"email": "bob@example.com", "role": "owner"}
    )
    assert response.status_code == 403
    assert bob_client.get(reverse("security-log")).status_code == 403
    assert snapshot(account) == before


def test_signed_out_visitors_are_sent_to_sign_in(client, alice_objects):
    for name, method, data in OBJECT_REQUESTS:
        response = send(client, method, url_of(name, *alice_objects), data)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_a_user_left_without_an_account_is_offered_a_new_one(client, bob, alice_objects):
    Membership.objects.filter(user=bob).delete()  # removed from alice's account
    client.force_login(bob)

    for name in ("dashboard", "project-list", "account"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"] == reverse("no-account")
    page = client.get(reverse("no-account")).content.decode()
    assert "not a member of any ReqRun account" in page

    response = client.post(reverse("no-account"), follow=True)
    membership = Membership.objects.get(user=bob)
    assert membership.role == Membership.Role.OWNER
    assert membership.account != alice_objects[-1]
    assert response.redirect_chain[-1][0] == reverse("dashboard")
    assert client.get(reverse("no-account"))["Location"] == reverse("dashboard")


def test_a_double_click_on_start_an_account_starts_one(transactional_db, alice_objects):
    user = UserFactory(email="dana@example.com")  # left without an account
    first_click, second_click = Client(), Client()
    first_click.force_login(user)
    second_click.force_login(user)

    raised = raised_while_held(
        lambda: first_click.post(reverse("no-account")),
        lambda: second_click.post(reverse("no-account")),
    )

    assert raised is None, raised
    assert Membership.objects.filter(user=user).count() == 1


def acting_as(role, account_name):
    """The layout's account and role, as the navigation shows them."""
    return f'<strong>{account_name}</strong><br><span class="muted">{role}</span>'


@pytest.fixture
def bob_in_his_own_account(bob_client, bob):
    """bob, a plain member of alice's account, owns one of his own, which he has chosen."""
    own = AccountFactory(name="Bob's workspace")
    MembershipFactory(user=bob, account=own, role=Membership.Role.OWNER)
    bob_client.post(reverse("switch-account"), {"account": own.public_id})
    return own


def test_project_pages_follow_the_projects_account_not_the_one_chosen(
    bob_client, bob_in_his_own_account, alice_objects
):
    project = alice_objects[0]

    settings_page = bob_client.get(reverse("project-detail", args=[project.public_id]))
    keys_page = bob_client.get(reverse("api-key-list", args=[project.public_id]))

    for page in (settings_page.content.decode(), keys_page.content.decode()):
        assert acting_as("Member", "Alice&#x27;s workspace") in page
        assert "Bob&#x27;s workspace</strong>" not in page
    assert "Delete project" not in settings_page.content.decode()
    assert reverse("project-rename", args=[project.public_id]) not in settings_page.content.decode()
    assert "Revoke…" not in keys_page.content.decode()
    assert 'name="name"' not in keys_page.content.decode()  # no form to create a key
    chosen = bob_client.get(reverse("dashboard")).context["current_account"]
    assert chosen == bob_in_his_own_account  # still the one chosen


def test_a_request_page_follows_the_requests_account_not_the_one_chosen(
    bob_client, bob_in_his_own_account, alice, alice_objects
):
    record = RequestFactory(project=alice_objects[0], status="queued")

    as_member = bob_client.get(reverse("request-detail", args=[record.public_id]))
    alice_client = Client()
    alice_client.force_login(alice)
    as_owner = alice_client.get(reverse("request-detail", args=[record.public_id]))

    assert acting_as("Member", "Alice&#x27;s workspace") in as_member.content.decode()
    assert "Cancel request" not in as_member.content.decode()  # a member cannot cancel
    assert "Cancel request" in as_owner.content.decode()


def test_an_owner_sees_their_controls_while_another_account_is_chosen(
    alice_client, alice, charlie, alice_objects
):
    project = alice_objects[0]
    charlie_account = charlie.memberships.get().account
    MembershipFactory(user=alice, account=charlie_account, role=Membership.Role.MEMBER)
    alice_client.post(reverse("switch-account"), {"account": charlie_account.public_id})

    settings_page = alice_client.get(reverse("project-detail", args=[project.public_id]))
    keys_page = alice_client.get(reverse("api-key-list", args=[project.public_id]))

    for page in (settings_page.content.decode(), keys_page.content.decode()):
        assert acting_as("Owner", "Alice&#x27;s workspace") in page
    assert "Delete project" in settings_page.content.decode()
    assert reverse("project-rename", args=[project.public_id]) in settings_page.content.decode()
    assert "Revoke…" in keys_page.content.decode()
    assert 'name="name"' in keys_page.content.decode()


@pytest.fixture
def alice_in_another_account(alice_client, alice, bob, alice_objects):
    """alice owns a second account, bob is a member of both, and alice has chosen the
    second one (in another tab) since her page of the first was opened."""
    other = AccountFactory(name="Alice's side project")
    MembershipFactory(user=alice, account=other, role=Membership.Role.OWNER)
    MembershipFactory(user=bob, account=other, role=Membership.Role.MEMBER)
    alice_client.post(reverse("switch-account"), {"account": other.public_id})
    return other


# The account-level forms, each as the page of alice's first account sent it.
ACCOUNT_FORMS = [
    ("alice", "member-role", {"email": "bob@example.com", "role": "admin"}),
    ("alice", "member-remove", {"email": "bob@example.com"}),
    ("alice", "member-invite", {"email": "eve@example.com", "role": "member"}),
    ("alice", "project-list", {"name": "Meant for the first account"}),
    ("alice", "privacy-export", {}),
    ("alice", "billing-cancel", {}),
    ("bob", "member-leave", {}),
]


@pytest.mark.parametrize(("who", "name", "data"), ACCOUNT_FORMS)
def test_a_form_from_before_a_switch_of_account_changes_neither_account(
    client, alice_client, bob, alice_objects, alice_in_another_account, who, name, data
):
    first = alice_objects[-1]
    if who == "bob":
        client.force_login(bob)
        client.post(reverse("switch-account"), {"account": alice_in_another_account.public_id})
    sender = alice_client if who == "alice" else client
    before = snapshot(first), snapshot(alice_in_another_account)

    response = sender.post(reverse(name), {**data, "account": first.public_id})

    assert response.status_code == 400
    assert "you switched account in another tab" in response.content.decode()
    assert (snapshot(first), snapshot(alice_in_another_account)) == before
    assert not AccountExport.objects.exists()
