"""Deleting an account: the page says what will happen, the password is asked again, sole
owners of shared accounts are stopped, Paddle is called first (its failure changes nothing),
then keys, requests and data go, the user is signed out, and late webhooks bring nothing back."""

import logging
import threading
from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from allauth.usersessions.models import UserSession
from django.contrib.sessions.models import Session
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, AuditEvent, Membership, User
from billing.models import Invoice, Subscription, WebhookEvent
from privacy import deletion, services
from privacy.models import AccountDeletion, AccountExport, AccountExportChunk
from projects import services as project_services
from projects.limits import set_plan
from projects.members import (
    MembershipError,
    accept_invitation,
    change_role,
    invitation_token,
    leave_account,
    remove_member,
)
from projects.models import AccountPlan, ApiKey, MonthlyUsage, Project
from requests_app.models import Attempt, Request
from tests.billing import payloads
from tests.billing.paddle_stub import paddle_error
from tests.conftest import wait_until, waiting_for_a_lock
from tests.factories import (
    PASSWORD,
    AccountDeletionFactory,
    AccountExportChunkFactory,
    AccountExportFactory,
    AttemptFactory,
    InvitationFactory,
    MembershipFactory,
    ProjectFactory,
    RequestFactory,
    UserFactory,
)
from tests.privacy.conftest import fill

pytestmark = pytest.mark.django_db

DELETE_URL = reverse("privacy-delete-account")
ALICE = "alice@example.com"


def post_delete(client, account: Account, password: str = PASSWORD, **extra):
    return client.post(
        DELETE_URL, {"account": account.public_id, "password": password, **extra}, follow=False
    )


@pytest.fixture
def billed(alice, alice_account, paddle_settings, paddle_api):
    """alice's account with a live subscription that the Paddle stand-in knows."""
    return fill(alice_account, alice, paddle_api=paddle_api)


def purge(account: Account) -> bool:
    """Run the purge as the worker would, after the grace period."""
    pk = AccountDeletion.objects.get(account=account).pk
    later = timezone.now() + deletion.PURGE_GRACE + timedelta(seconds=1)
    return deletion.purge_deleted_account(deletion_pk=pk, now=later)


def assert_nothing_changed(account: Account, alice: User) -> None:
    assert Account.objects.filter(pk=account.pk).exists()
    assert not AccountDeletion.objects.exists()
    assert Membership.objects.filter(user=alice, account=account, role="owner").exists()
    assert not ApiKey.objects.filter(project__account=account, revoked_at__isnull=False).exists()
    assert User.objects.filter(pk=alice.pk).exists()


def test_the_page_says_what_will_happen(alice_client, filled):
    page = alice_client.get(DELETE_URL).content.decode()
    for promise in (
        "subscription is canceled at Paddle",
        "1 active API key stops working",
        "Queued requests are canceled",
        "1 project",
        "every request record",
        "invoice",
        "You are signed out",
        "Your login (alice@example.com) is deleted too",
    ):
        assert promise in page
    assert 'name="password"' in page
    assert reverse("privacy-export") in page


def test_the_account_page_links_export_and_delete_for_owners_only(alice_client, bob, client):
    page = alice_client.get(reverse("account")).content.decode()
    assert reverse("privacy-export") in page and DELETE_URL in page
    client.force_login(bob)
    page = client.get(reverse("account")).content.decode()
    assert DELETE_URL not in page


def test_deleting_an_account_end_to_end(
    alice_client, alice, alice_account, charlie, paddle_settings, paddle_api, caplog
):
    filled = fill(alice_account, alice, paddle_api=paddle_api)
    AccountExportChunkFactory(export__account=alice_account)
    queued = RequestFactory(project=filled.project, status="queued")
    charlie_account = Account.objects.get(memberships__user=charlie)
    charlie_project = fill(charlie_account, charlie).project

    response = post_delete(alice_client, alice_account)

    assert response.status_code == 302 and response["Location"] == reverse("home")
    # Paddle was told first: the subscription ends now, not at the end of its period.
    [call] = paddle_api.calls
    assert (call.method, call.path) == (
        "POST",
        f"/subscriptions/{filled.subscription.paddle_subscription_id}/cancel",
    )
    assert call.body["effective_from"] == "immediately"
    # Closed at once: keys revoked, nobody has access, the login is gone, signed out.
    assert not ApiKey.objects.filter(project__account=alice_account, revoked_at=None).exists()
    assert not Membership.objects.filter(account=alice_account).exists()
    assert not User.objects.filter(pk=alice.pk).exists()
    assert not EmailAddress.objects.filter(email="alice@example.com").exists()
    assert "_auth_user_id" not in alice_client.session
    assert alice_client.get(reverse("dashboard")).status_code == 302

    with caplog.at_level(logging.INFO, logger="privacy.deletion"):
        assert purge(alice_account) is True

    assert not Account.objects.filter(pk=alice_account.pk).exists()
    for model, lookup in (
        (Project, "account"),
        (ApiKey, "project__account"),
        (Request, "account"),
        (Attempt, "request__account"),
        (MonthlyUsage, "account"),
        (AccountPlan, "account"),
        (Subscription, "account"),
        (Invoice, "account"),
        (AuditEvent, "account"),
        (AccountExport, "account"),
        (AccountExportChunk, "export__account"),
    ):
        assert not model.objects.filter(**{f"{lookup}_id": alice_account.pk}).exists(), model
    assert not Request.objects.filter(pk=queued.pk).exists()
    assert not AccountDeletion.objects.exists()
    # Another tenant's data is untouched.
    assert Request.objects.filter(project=charlie_project).count() == 1
    assert ApiKey.objects.filter(project=charlie_project, revoked_at=None).count() == 1
    # The one trace left: a log line of metadata.
    [record] = [r for r in caplog.records if r.getMessage() == "account deleted"]
    assert record.account_id == alice_account.public_id
    assert record.requests_deleted == 2
    assert "alice@example.com" not in str(record.__dict__)


def test_a_deleted_login_leaves_no_session_behind_on_other_browsers(alice_client, alice_account):
    """Each sign-in session keeps how its user signed in, email included; once the login is
    deleted, none of them is kept until it would have expired."""
    laptop = Client()
    signed_in = laptop.post(reverse("account_login"), {"login": ALICE, "password": PASSWORD})
    assert signed_in.status_code == 302
    assert ALICE in repr([session.get_decoded() for session in Session.objects.all()])

    post_delete(alice_client, alice_account)

    assert ALICE not in repr([session.get_decoded() for session in Session.objects.all()])
    assert not UserSession.objects.exists()


def test_a_login_in_other_accounts_is_kept(alice_client, alice, alice_account, charlie):
    MembershipFactory(
        user=alice, account=Account.objects.get(memberships__user=charlie), role="member"
    )
    response = alice_client.post(
        DELETE_URL, {"account": alice_account.public_id, "password": PASSWORD}, follow=True
    )
    assert "Your login is kept for your other accounts" in response.content.decode()
    assert User.objects.filter(pk=alice.pk).exists()
    assert not Membership.objects.filter(account=alice_account).exists()
    assert "_auth_user_id" not in alice_client.session


def test_a_wrong_password_changes_nothing(alice_client, alice, filled, paddle_settings, paddle_api):
    response = post_delete(alice_client, filled.account, password="not my password")

    assert response.status_code == 400
    assert "password is not correct" in response.content.decode()
    assert paddle_api.calls == []
    assert_nothing_changed(filled.account, alice)


def test_repeated_wrong_passwords_are_throttled(alice_client, alice, alice_account):
    for _ in range(10):
        post_delete(alice_client, alice_account, password="guess")
    response = post_delete(alice_client, alice_account)  # even the right one, for a while
    assert response.status_code == 400
    assert "Too many attempts" in response.content.decode()
    assert_nothing_changed(alice_account, alice)


def test_a_sole_owner_with_members_must_hand_over_first(
    alice_client, alice, bob, filled, paddle_settings, paddle_api
):
    page = alice_client.get(DELETE_URL).content.decode()
    assert "only owner of this account, and 1 other person uses it" in page
    assert 'name="password"' not in page

    response = post_delete(alice_client, filled.account)

    assert response.status_code == 400
    assert "make one of them an owner" in response.content.decode()
    assert paddle_api.calls == []
    assert_nothing_changed(filled.account, alice)
    assert Membership.objects.filter(user=bob, account=filled.account).exists()


def test_with_another_owner_the_account_can_be_deleted_and_members_lose_access(
    alice_client, alice, bob, alice_account, client
):
    dana = UserFactory(email="dana@example.com")
    MembershipFactory(user=dana, account=alice_account, role="owner")
    page = alice_client.get(DELETE_URL).content.decode()
    assert "bob@example.com, dana@example.com" in page

    assert post_delete(alice_client, alice_account).status_code == 302

    assert not Membership.objects.filter(account=alice_account).exists()
    assert User.objects.filter(pk__in=[bob.pk, dana.pk]).count() == 2  # their logins are theirs


def test_a_paddle_error_changes_nothing(
    alice_client, alice, alice_account, paddle_settings, paddle_api
):
    fill(alice_account, alice, paddle_api=paddle_api)
    paddle_api.fail_next(paddle_error(503, "internal_error", "Service unavailable"))

    response = post_delete(alice_client, alice_account)

    assert response.status_code == 400
    page = response.content.decode()
    assert "Paddle could not be reached" in page and "not deleted" in page
    assert_nothing_changed(alice_account, alice)
    assert Subscription.objects.get(account=alice_account).status == "active"
    assert "_auth_user_id" in alice_client.session


@pytest.mark.parametrize(
    "change",
    [{"scheduled_change_action": "cancel"}, {"status": "paused"}],
    ids=["set-to-end", "paused"],
)
def test_a_subscription_set_to_end_or_paused_is_ended_at_once(
    alice_client, alice, alice_account, paddle_settings, paddle_api, change
):
    # Neither charges today, but one would run to the period's end and the other could
    # resume by itself: both are canceled now.
    filled = fill(alice_account, alice, paddle_api=paddle_api)
    Subscription.objects.filter(pk=filled.subscription.pk).update(**change)
    assert "canceled at Paddle first" in alice_client.get(DELETE_URL).content.decode()

    assert post_delete(alice_client, alice_account).status_code == 302

    [call] = paddle_api.calls
    assert call.path.endswith("/cancel") and call.body["effective_from"] == "immediately"


def test_an_ended_subscription_is_not_canceled_again(
    alice_client, alice, alice_account, paddle_settings, paddle_api
):
    filled = fill(alice_account, alice, paddle_api=paddle_api)
    Subscription.objects.filter(pk=filled.subscription.pk).update(status="canceled")
    assert post_delete(alice_client, alice_account).status_code == 302
    assert paddle_api.calls == []


def test_a_subscription_paddle_already_ended_does_not_block_deletion(
    alice_client, alice, alice_account, paddle_settings, paddle_api
):
    # An earlier try canceled it at Paddle, then failed before recording Paddle's answer:
    # Paddle refuses to cancel it again.
    filled = fill(alice_account, alice, paddle_api=paddle_api)
    subscription_id = filled.subscription.paddle_subscription_id
    paddle_api.subscriptions[subscription_id] = payloads.canceled_now(
        paddle_api.subscriptions[subscription_id]
    )

    assert post_delete(alice_client, alice_account).status_code == 302

    assert [(call.method, call.path) for call in paddle_api.calls] == [
        ("POST", f"/subscriptions/{subscription_id}/cancel"),
        ("GET", f"/subscriptions/{subscription_id}"),
    ]
    assert AccountDeletion.objects.filter(account=alice_account).exists()


def test_members_and_other_tenants_cannot_delete(bob_client, alice, alice_account, client, charlie):
    assert bob_client.get(DELETE_URL).status_code == 403
    assert post_delete(bob_client, alice_account).status_code == 403
    assert_nothing_changed(alice_account, alice)

    # charlie's page deletes charlie's account only; naming alice's is refused.
    client.force_login(charlie)
    response = post_delete(client, alice_account)
    assert response.status_code == 400
    assert "another account" in response.content.decode()
    assert_nothing_changed(alice_account, alice)
    assert Account.objects.filter(memberships__user=charlie).exists()


def test_deleting_during_a_running_request(alice_client, alice, billed):
    running = RequestFactory(
        project=billed.project,
        status="running",
        attempt_count=1,
        lease_until=timezone.now() + timedelta(minutes=2),
    )
    queued = RequestFactory(project=billed.project, status="queued")

    assert post_delete(alice_client, billed.account).status_code == 302

    # The purge's first run (queued at once) ends queued work; the running attempt may
    # finish but nothing follows it.
    pk = AccountDeletion.objects.get().pk
    assert deletion.purge_deleted_account(deletion_pk=pk) is False
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == "canceled"
    assert running.status == "running" and running.cancel_requested
    # While it runs, the rows stay (its worker and its caller still read them).
    assert purge(billed.account) is False
    assert Request.objects.filter(pk=running.pk).exists()
    # The worker finishes the attempt: now everything goes.
    Request.objects.filter(pk=running.pk).update(status="succeeded", lease_until=None)
    assert purge(billed.account) is True
    assert not Request.objects.filter(project__account_id=billed.account.pk).exists()


def test_a_running_request_whose_worker_died_does_not_hold_the_deletion(alice_client, billed):
    RequestFactory(
        project=billed.project,
        status="running",
        lease_until=timezone.now() - timedelta(minutes=1),
    )
    post_delete(alice_client, billed.account)
    assert purge(billed.account) is True


def test_the_purge_waits_for_its_grace_period_and_runs_once(alice_client, billed):
    post_delete(alice_client, billed.account)
    pk = AccountDeletion.objects.get().pk
    assert deletion.purge_deleted_account(deletion_pk=pk) is False  # callers read first
    assert Account.objects.filter(pk=billed.account.pk).exists()
    assert deletion.due_deletions() == []
    assert purge(billed.account) is True
    assert deletion.purge_deleted_account(deletion_pk=pk) is True  # again: nothing to do


def test_an_export_being_built_stops_and_sends_no_email(alice_client, alice, billed, mailoutbox):
    export = AccountExportFactory(account=billed.account, requested_by=alice)
    post_delete(alice_client, billed.account)

    assert services.build_export(export_pk=export.pk) is None
    export.refresh_from_db()
    assert export.status == "failed"
    assert mailoutbox == []


def test_an_export_asked_for_as_the_account_closes_builds_nothing(
    alice_client, alice_account, mailoutbox
):
    """dana asked for an export in the instant alice deleted the account: her request passed
    its check, then waited for the account's lock until the deletion had committed."""
    dana = UserFactory(email="dana@example.com")
    MembershipFactory(user=dana, account=alice_account, role="owner")
    assert post_delete(alice_client, alice_account).status_code == 302

    try:
        services.request_export(account=alice_account, actor=dana, site_url="http://testserver/")
    except services.ExportUnavailable:
        pass
    for export in AccountExport.objects.all():  # as the worker would
        services.build_export(export_pk=export.pk)

    assert not AccountExport.objects.filter(status="ready").exists()
    assert mailoutbox == []


def test_a_webhook_after_the_deletion_brings_nothing_back(
    alice_client, alice, alice_account, paddle_settings, paddle_api, webhooks
):
    filled = fill(alice_account, alice, paddle_api=paddle_api)
    subscription_id = filled.subscription.paddle_subscription_id
    account_id = alice_account.public_id
    post_delete(alice_client, alice_account)
    # Paddle announces the scheduled cancellation while the account is being closed.
    entity = payloads.cancel_scheduled(
        payloads.subscription(account_id=account_id, subscription_id=subscription_id)
    )
    webhooks.deliver(payloads.event("subscription.updated", entity))
    assert purge(alice_account) is True

    # Then the cancellation takes effect, and a late payment is reported.
    canceled = webhooks.deliver(
        payloads.event(
            "subscription.canceled",
            payloads.subscription(
                account_id=account_id,
                subscription_id=subscription_id,
                status="canceled",
                canceled_at=timezone.now(),
            ),
        )
    )
    paid = webhooks.deliver(
        payloads.event(
            "transaction.completed",
            payloads.transaction(account_id=account_id, subscription_id=subscription_id),
        )
    )

    for event in (canceled, paid):
        assert event.processed_at is None and event.account is None
        assert "No ReqRun account" in event.error
    assert not Account.objects.filter(public_id=account_id).exists()
    assert not Subscription.objects.exists()
    assert not Invoice.objects.exists()
    assert WebhookEvent.objects.count() == 3


class PurgeThread(threading.Thread):
    """A purge run by another worker: what it returned, or the exception it raised."""

    def __init__(self, purge, **kwargs):
        super().__init__(daemon=True)
        self.purge, self.kwargs = purge, kwargs
        self.outcome: list = []

    def run(self) -> None:
        try:
            self.outcome.append(self.purge(**self.kwargs))
        except Exception as error:  # noqa: BLE001 - what the test reports
            self.outcome.append(error)
        finally:
            connection.close()


def test_the_purge_and_a_retention_purge_on_the_same_requests_do_not_deadlock(
    transactional_db,
):
    """The retention purge locks a batch of expired requests, then deletes their attempts
    and them. A deleted account's purge meeting that batch waits for it to end, without
    holding anything the retention purge still needs."""
    expired = RequestFactory(status="succeeded", attempt_count=1)
    AttemptFactory(request=expired, number=1)
    closed = AccountDeletionFactory(account=expired.account)
    purging = PurgeThread(deletion.purge_deleted_account, deletion_pk=closed.pk)

    with transaction.atomic():  # the retention purge's batch
        list(Request.objects.select_for_update().filter(pk=expired.pk))
        purging.start()
        wait_until(
            lambda: purging.outcome or waiting_for_a_lock() == 1,
            message="the account's purge never reached the locked batch",
        )
        Attempt.objects.filter(request=expired).delete()
        Request.objects.filter(pk=expired.pk).delete()
    purging.join(30)

    assert purging.outcome == [True]
    assert not Account.objects.filter(pk=expired.account_id).exists()


def test_a_purge_queued_again_while_one_runs_leaves_the_account_to_it(transactional_db):
    """The privacy sweep queues the purge of a deletion not finished yet every minute: while
    one purge is deleting, another finds its lease and returns at once, instead of piling
    up behind it."""
    request = RequestFactory(status="succeeded", attempt_count=1)
    closed = AccountDeletionFactory(account=request.account)
    first = PurgeThread(deletion.purge_deleted_account, deletion_pk=closed.pk)
    again = PurgeThread(deletion.purge_deleted_account, deletion_pk=closed.pk)

    with transaction.atomic():  # the first purge is held up deleting this request
        list(Request.objects.select_for_update().filter(pk=request.pk))
        first.start()
        wait_until(
            lambda: first.outcome or waiting_for_a_lock() == 1,
            message="the first purge never reached the locked request",
        )
        again.start()
        wait_until(
            lambda: again.outcome or waiting_for_a_lock() == 2,
            message="the second purge neither returned nor waited",
        )
        while_the_first_ran = list(again.outcome)
    first.join(30)
    again.join(30)

    assert while_the_first_ran == [False]
    assert first.outcome == [True]
    assert not Account.objects.filter(pk=request.account_id).exists()


def test_a_project_purge_and_its_accounts_purge_do_not_deadlock(transactional_db):
    """A project being deleted while its account is: both purges lock the project's
    requests in one order (newest first), so the one that comes second waits for the first
    holding nothing of them, and PostgreSQL aborts neither as a deadlock. Here both meet a
    request a third transaction holds, each having locked what came before it in its own
    order."""
    project = ProjectFactory(deleted_at=timezone.now() - timedelta(minutes=1))
    oldest, middle, newest = (
        RequestFactory(project=project, status="succeeded", public_id=f"req_{n:028x}")
        for n in (1, 2, 3)
    )
    closed = AccountDeletionFactory(account=project.account)
    project_purge = PurgeThread(project_services.purge_deleted_project, project_pk=project.pk)
    account_purge = PurgeThread(deletion.purge_deleted_account, deletion_pk=closed.pk)

    with transaction.atomic():  # a third party holds one request: both purges meet it
        list(Request.objects.select_for_update().filter(pk=middle.pk))
        for waiting, purge in enumerate((project_purge, account_purge), start=1):
            purge.start()
            wait_until(
                lambda: purge.outcome or waiting_for_a_lock() == waiting,  # noqa: B023
                message="a purge never reached the locked request",
            )
    project_purge.join(30)
    account_purge.join(30)

    assert project_purge.outcome == [True]
    assert account_purge.outcome == [True]
    assert not Request.objects.exists()
    assert not Account.objects.filter(pk=project.account_id).exists()


def test_a_member_joining_while_paddle_cancels_cannot_leave_the_account_open_unbilled(
    transactional_db, alice, alice_account, paddle_settings, paddle_api
):
    """dana opens her invitation in the instant alice's deletion is at Paddle: she is told
    the account is being deleted, and the deletion goes through. Before, she joined, the
    re-check refused the deletion, and the account stayed open with its subscription
    already canceled."""
    filled = fill(alice_account, alice, paddle_api=paddle_api)
    set_plan(account=alice_account, plan_code="pro")  # room for a second member
    dana = UserFactory(email="dana@example.com")
    invitation = InvitationFactory(account=alice_account, email="dana@example.com")
    joined: list = []

    def dana_accepts(call) -> None:
        if call.path.endswith("/cancel"):
            try:
                joined.append(accept_invitation(token=invitation_token(invitation), user=dana))
            except MembershipError as error:
                joined.append(error)
            finally:
                connection.close()

    paddle_api.on_call = dana_accepts
    membership = Membership.objects.get(user=alice, account=alice_account)

    closed = deletion.close_account(membership=membership, password=PASSWORD)

    assert closed.account_id == alice_account.public_id
    [refusal] = joined
    assert isinstance(refusal, MembershipError)
    assert "being deleted" in str(refusal)
    assert AccountDeletion.objects.filter(account=alice_account).exists()
    assert not Membership.objects.filter(account=alice_account).exists()
    assert Subscription.objects.get(pk=filled.subscription.pk).status == "canceled"


def test_after_paddle_refused_the_deletion_members_can_join_again(
    alice_client, alice, alice_account, paddle_settings, paddle_api
):
    fill(alice_account, alice, paddle_api=paddle_api)
    set_plan(account=alice_account, plan_code="pro")  # room for a second member
    paddle_api.fail_next(paddle_error(503, "internal_error", "Service unavailable"))
    assert post_delete(alice_client, alice_account).status_code == 400
    dana = UserFactory(email="dana@example.com")
    invitation = InvitationFactory(account=alice_account, email="dana@example.com")

    accept_invitation(token=invitation_token(invitation), user=dana)

    assert Membership.objects.filter(user=dana, account=alice_account).exists()
    assert_nothing_changed(alice_account, alice)


def test_while_an_account_is_being_deleted_its_members_do_not_change(alice, bob, alice_account):
    dana = UserFactory(email="dana@example.com")
    dana_membership = MembershipFactory(user=dana, account=alice_account, role="owner")
    Account.objects.filter(pk=alice_account.pk).update(closing_since=timezone.now())
    bob_membership = Membership.objects.get(user=bob)

    for change in (
        lambda: change_role(membership=bob_membership, role="owner", actor=alice),
        lambda: remove_member(membership=bob_membership, actor=alice),
        lambda: leave_account(membership=dana_membership),
    ):
        with pytest.raises(MembershipError, match="being deleted"):
            change()
    assert Membership.objects.filter(account=alice_account).count() == 3
    assert Membership.objects.get(user=bob).role == "member"

    # A mark left by a deletion whose process died holds nothing for long.
    Account.objects.filter(pk=alice_account.pk).update(
        closing_since=timezone.now() - timedelta(minutes=6)
    )
    leave_account(membership=dana_membership)
    assert not Membership.objects.filter(user=dana).exists()
