"""Operators close an account through the admin's "Close and delete" action, which runs the
owner's own deletion (Paddle first, keys revoked, data purged once nothing runs); the raw
admin delete, which would skip all of that, is gone."""

import pytest
from allauth.usersessions.models import UserSession
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, AuditEvent, Membership, User
from billing.models import Subscription
from privacy.models import AccountDeletion
from projects.models import ApiKey
from requests_app.models import Request
from tests.billing.paddle_stub import paddle_error
from tests.conftest import delete_in_admin
from tests.factories import PASSWORD, AccountDeletionFactory, RequestFactory, UserFactory
from tests.privacy.conftest import fill
from tests.privacy.test_delete import purge

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:accounts_account_changelist")


def close(client, account: Account, reason: str | None):
    data = {"action": "close_selected", ACTION_CHECKBOX_NAME: [account.pk]}
    if reason is not None:
        data.update(apply="yes", reason=reason)
    return client.post(CHANGELIST, data)


def test_an_operator_closes_an_account_as_its_owner_would(
    operator_client, alice, alice_account, bob, charlie, paddle_settings, paddle_api
):
    filled = fill(alice_account, alice, paddle_api=paddle_api)
    queued = RequestFactory(project=filled.project, status="queued")
    charlie_account = Account.objects.get(memberships__user=charlie)

    asked = close(operator_client, alice_account, reason=None)
    assert asked.status_code == 200 and 'name="reason"' in asked.content.decode()
    assert "required" in close(operator_client, alice_account, reason="").content.decode()
    assert not AccountDeletion.objects.exists() and not paddle_api.calls

    response = close(operator_client, alice_account, reason="Fraud: stolen card (ticket 812)")

    assert response.status_code == 302
    [call] = paddle_api.calls
    assert call.path == f"/subscriptions/{filled.subscription.paddle_subscription_id}/cancel"
    assert call.body["effective_from"] == "immediately"
    assert Subscription.objects.get(pk=filled.subscription.pk).status == "canceled"
    assert not ApiKey.objects.filter(project__account=alice_account, revoked_at=None).exists()
    assert not Membership.objects.filter(account=alice_account).exists()
    assert User.objects.filter(pk__in=[alice.pk, bob.pk]).count() == 2  # logins are kept
    event = AuditEvent.objects.get(account=alice_account, action="account_closed_by_operator")
    assert event.actor.email == "ops@reqrun.com"
    assert event.target == "Fraud: stolen card (ticket 812)"
    assert event.ip_address == "127.0.0.1"

    assert purge(alice_account) is True
    assert not Account.objects.filter(pk=alice_account.pk).exists()
    assert not Request.objects.filter(pk=queued.pk).exists()
    # The admin's history outlives the account, with the reason.
    entry = LogEntry.objects.get(object_id=str(alice_account.pk))
    assert "Fraud: stolen card (ticket 812)" in entry.get_change_message()
    assert Account.objects.filter(pk=charlie_account.pk).exists()


def test_a_paddle_error_leaves_the_account_as_it_was(
    operator_client, alice, alice_account, paddle_settings, paddle_api
):
    fill(alice_account, alice, paddle_api=paddle_api)
    paddle_api.fail_next(paddle_error(503, "internal_error", "Service unavailable"))

    response = close(operator_client, alice_account, reason="Asked by email")

    assert response.status_code == 302
    page = operator_client.get(response["Location"]).content.decode()
    assert "was not deleted" in page
    assert not AccountDeletion.objects.exists()
    assert Membership.objects.filter(account=alice_account, user=alice).exists()
    assert ApiKey.objects.filter(project__account=alice_account, revoked_at=None).exists()
    assert not AuditEvent.objects.filter(action="account_closed_by_operator").exists()


def test_the_raw_admin_delete_is_gone(operator_client, alice, alice_account):
    page = operator_client.get(CHANGELIST).content.decode()
    assert 'value="close_selected"' in page
    assert 'value="delete_selected"' not in page

    delete_page = operator_client.get(
        reverse("admin:accounts_account_delete", args=[alice_account.pk])
    )
    operator_client.post(
        CHANGELIST,
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [alice_account.pk], "post": "yes"},
    )
    operator_client.post(
        reverse("admin:accounts_account_delete", args=[alice_account.pk]), {"post": "yes"}
    )

    assert delete_page.status_code == 403
    assert Account.objects.filter(pk=alice_account.pk).exists()
    assert Membership.objects.filter(account=alice_account, user=alice).exists()


def delete_user(client, user: User):
    return client.post(reverse("admin:accounts_user_delete", args=[user.pk]), {"post": "yes"})


def test_an_accounts_only_owner_is_not_deleted_from_the_users_list(
    operator_client, alice, alice_account, bob
):
    """The account would be left with nobody to manage, export or delete it, its keys
    working and its subscription billed: the admin names it, to be closed first."""
    users = reverse("admin:accounts_user_changelist")

    asked = operator_client.get(reverse("admin:accounts_user_delete", args=[alice.pk]))
    delete_user(operator_client, alice)
    operator_client.post(
        users, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [alice.pk], "post": "yes"}
    )

    assert alice_account.public_id in asked.content.decode()
    assert Membership.objects.filter(account=alice_account, user=alice, role="owner").exists()


def test_a_user_deleted_in_the_admin_is_signed_out_everywhere(operator_client, alice_account, bob):
    browser = Client()
    browser.post(reverse("account_login"), {"login": bob.email, "password": PASSWORD})
    assert UserSession.objects.filter(user=bob).exists()

    assert delete_user(operator_client, bob).status_code == 302

    assert not User.objects.filter(pk=bob.pk).exists()
    assert not UserSession.objects.filter(session_key=browser.session.session_key).exists()
    assert not Session.objects.filter(session_key=browser.session.session_key).exists()


def test_a_member_deleted_from_the_users_list_is_in_the_accounts_security_log(
    operator_client, alice_account, bob
):
    """As the dashboard's removal: the owners see who removed whom, one page or in bulk."""
    dana = UserFactory(email="dana@example.com")
    Membership.objects.create(user=dana, account=alice_account, role="admin")

    delete_user(operator_client, bob)
    operator_client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [dana.pk], "post": "yes"},
    )

    assert not User.objects.filter(pk__in=[bob.pk, dana.pk]).exists()
    removed = AuditEvent.objects.filter(account=alice_account, action="member_removed")
    assert sorted((event.target, event.actor.email) for event in removed) == [
        ("bob@example.com", "ops@reqrun.com"),
        ("dana@example.com", "ops@reqrun.com"),
    ]


def test_a_member_of_an_account_being_deleted_waits_until_it_is_gone(
    operator_client, alice_account, bob
):
    Account.objects.filter(pk=alice_account.pk).update(closing_since=timezone.now())

    asked = operator_client.get(reverse("admin:accounts_user_delete", args=[bob.pk]))
    delete_user(operator_client, bob)

    assert "it is being deleted just now" in asked.content.decode()
    assert Membership.objects.filter(account=alice_account, user=bob).exists()


def test_an_accounts_deletion_is_not_undone_in_admin(operator_client, alice_account):
    """Its row is what the worker purges the account by: deleted, the account's data would
    stay for good, after its owner (or an operator) deleted it."""
    deletion = AccountDeletionFactory(account=alice_account)

    assert delete_in_admin(operator_client, deletion) == 403
    assert AccountDeletion.objects.filter(pk=deletion.pk).exists()


def test_a_session_is_ended_in_admin_never_moved_or_forgotten(
    operator_client, alice_account, bob, charlie
):
    """A user's sessions are ended by these rows (a second factor turned on or removed, a
    login deleted): one moved to another user, added, or deleted while its browser stays
    signed in would outlive that. Deleting one signs its browser out."""
    browser = Client()
    browser.post(reverse("account_login"), {"login": bob.email, "password": PASSWORD})
    row = UserSession.objects.get(user=bob)
    form = {
        "user": str(charlie.pk),
        "created_at_0": "2025-01-01",
        "created_at_1": "12:00",
        "ip": "203.0.113.7",
        "last_seen_at_0": "2025-01-01",
        "last_seen_at_1": "12:00",
        "user_agent": "Firefox",
        "data": '{"by": "hand"}',
    }

    moved = operator_client.post(
        reverse("admin:usersessions_usersession_change", args=[row.pk]), form
    )
    added = operator_client.post(reverse("admin:usersessions_usersession_add"), form)
    assert UserSession.objects.get(pk=row.pk).user_id == bob.pk
    ended = operator_client.post(
        reverse("admin:usersessions_usersession_delete", args=[row.pk]), {"post": "yes"}
    )

    assert (moved.status_code, added.status_code, ended.status_code) == (403, 403, 302)
    assert not UserSession.objects.filter(user=charlie).exists()
    assert browser.get(reverse("dashboard"))["Location"].startswith(reverse("account_login"))
