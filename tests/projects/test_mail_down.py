"""Invitations and owner notices with a mail server that refuses connections: the page
answers, and the log names the kind of mail and the error, never an address."""

import logging

import pytest
from django.core import mail

from accounts.models import AuditEvent
from projects.members import INVITATIONS_PER_WINDOW
from projects.models import Invitation, UpstreamMove
from projects.tasks import email_owners_about_upstream_move
from tests.factories import MembershipFactory, UserFactory
from tests.mail_faults import closed_port, published_tasks, smtp_server, use_smtp
from tests.projects.conftest import PROVIDER_KEY
from tests.projects.test_members import invite
from tests.projects.test_upstream_host import primary_url, save_upstream

pytestmark = pytest.mark.django_db


def unsent_kinds(caplog, *addresses: str) -> list[str]:
    for record in caplog.records:
        for address in addresses:
            assert address not in str(vars(record))
        assert "/app/invitations/" not in str(vars(record))
    return [r.kind for r in caplog.records if r.getMessage() == "email not sent"]


def test_an_invitation_the_mail_server_refused_is_not_made_and_the_form_says_so(
    alice_client, alice_account, on_pro, settings, caplog
):
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING):
        response = invite(alice_client, email="dana@example.com")
    assert response.status_code == 200
    assert "could not send the invitation" in response.content.decode()
    assert not Invitation.objects.filter(account=alice_account).exists()
    assert not AuditEvent.objects.filter(action="member_invited").exists()
    assert unsent_kinds(caplog, "dana@example.com") == ["invitation"]

    # Nothing half-done blocks the retry ("already has a pending invitation").
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    invite(alice_client, email="dana@example.com")
    assert Invitation.objects.filter(account=alice_account, email="dana@example.com").exists()
    assert [m.to for m in mail.outbox] == [["dana@example.com"]]


def test_invitations_the_mail_server_refused_do_not_count_against_the_hourly_limit(
    alice_client, alice_account, on_pro, settings
):
    use_smtp(settings, closed_port())
    for _ in range(INVITATIONS_PER_WINDOW):
        assert "could not send" in invite(alice_client, email="dana@example.com").content.decode()

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    invite(alice_client, email="dana@example.com")

    assert Invitation.objects.filter(account=alice_account, email="dana@example.com").exists()


def test_an_invited_address_the_server_rejects_is_a_form_error(
    alice_client, alice_account, on_pro, settings
):
    with smtp_server(refuse={"nobody@example.com"}) as server:
        use_smtp(settings, server.port)
        response = invite(alice_client, email="nobody@example.com")
    assert "could not send the invitation" in response.content.decode()
    assert not Invitation.objects.filter(account=alice_account).exists()


def test_a_host_change_with_mail_down_is_saved_and_the_owners_email_follows(
    client,
    alice_client,
    alice_project,
    settings,
    caplog,
    django_capture_on_commit_callbacks,
):
    MembershipFactory(user=UserFactory(email="olga@example.com"), account=alice_project.account)
    use_smtp(settings, closed_port())
    with (
        published_tasks() as published,
        caplog.at_level(logging.WARNING),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = save_upstream(alice_client, alice_project, "https://llm.example.net/v1")
    assert response.status_code == 200
    assert primary_url(alice_project) == "https://llm.example.net/v1"
    assert AuditEvent.objects.filter(action="upstream_host_changed").exists()
    assert unsent_kinds(caplog, "alice@example.com") == ["upstream_host_changed"]
    assert mail.outbox == []

    # A retry is queued with ids only: no address, origin or key in the broker.
    [retry] = published
    assert retry.args and all(isinstance(arg, int) for arg in retry.args)
    for secret in ("@example.com", "llm.example.net", "api.openai.com", PROVIDER_KEY[-4:]):
        assert secret not in retry.message

    # Once mail is back, the task rebuilds the email from the rows: one message per owner.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    retry.run()
    assert sorted(m.to for m in mail.outbox) == [["alice@example.com"], ["olga@example.com"]]
    for message in mail.outbox:
        assert message.subject == f"[ReqRun] Upstream host changed for project {alice_project.name}"
        assert "before: https://api.openai.com:443" in message.body
        assert "now:    https://llm.example.net:443" in message.body
        assert "by alice@example.com" in message.body
        assert "stored provider key was removed" in message.body


OWNERS = ("alice@example.com", "olga@example.com", "pia@example.com")


def add_owners(account, *emails: str) -> list[int]:
    return [MembershipFactory(user=UserFactory(email=e), account=account).user_id for e in emails]


def test_an_owner_address_the_server_rejects_is_skipped_and_the_other_owners_are_told(
    alice_client, alice_project, settings, caplog, django_capture_on_commit_callbacks
):
    add_owners(alice_project.account, "olga@example.com", "pia@example.com")
    with (
        smtp_server(refuse={"olga@example.com"}) as server,
        published_tasks() as published,
        caplog.at_level(logging.WARNING),
        django_capture_on_commit_callbacks(execute=True),
    ):
        use_smtp(settings, server.port)
        save_upstream(alice_client, alice_project, "https://llm.example.net/v1")
    assert [d.recipients for d in server.delivered] == [["alice@example.com"], ["pia@example.com"]]
    assert published == []  # nothing to retry: the refusal is for good
    [record] = [r for r in caplog.records if r.getMessage() == "email not sent"]
    assert unsent_kinds(caplog, *OWNERS) == ["upstream_host_changed"]
    assert record.error == "SMTPRecipientsRefused"


def test_a_retry_after_mail_went_down_part_way_sends_only_to_the_owners_not_reached(
    alice_client, alice_project, settings, caplog, django_capture_on_commit_callbacks
):
    owed = add_owners(alice_project.account, "olga@example.com", "pia@example.com")
    with (
        smtp_server(down=range(2, 100)) as server,  # takes the first message, then goes down
        published_tasks() as published,
        caplog.at_level(logging.WARNING),
        django_capture_on_commit_callbacks(execute=True),
    ):
        use_smtp(settings, server.port)
        save_upstream(alice_client, alice_project, "https://llm.example.net/v1")
    assert [d.recipients for d in server.delivered] == [["alice@example.com"]]
    assert unsent_kinds(caplog, *OWNERS) == ["upstream_host_changed"]

    # The retry carries the ids of the owners still owed the email, never their addresses.
    [retry] = published
    assert retry.kwargs == {"owner_ids": owed}
    assert "@example.com" not in retry.message

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    retry.run()
    assert [m.to for m in mail.outbox] == [["olga@example.com"], ["pia@example.com"]]


def test_the_tasks_own_retry_sends_only_to_the_owners_not_reached(
    alice_client, alice_project, settings
):
    add_owners(alice_project.account, "olga@example.com", "pia@example.com")
    save_upstream(alice_client, alice_project, "https://llm.example.net/v1")
    move = UpstreamMove.objects.get()
    with smtp_server(down={2}) as server:  # down for the second owner's message only
        use_smtp(settings, server.port)
        email_owners_about_upstream_move.apply(args=[move.pk])  # applied here: retries at once
    assert [d.recipients for d in server.delivered] == [[owner] for owner in OWNERS]
