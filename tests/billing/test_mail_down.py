"""Billing emails with a mail server that is down or rejects a recipient: the webhook event is
still applied, a usage notice is marked sent all the same, and each owner still owed an email
gets it once mail works again, and only once."""

import logging

import pytest
from django.core import mail

from accounts.models import Account
from billing.services import send_usage_notices
from billing.tasks import email_owners_about_event
from projects.limits import usage_row
from tests.billing.test_duplicate_subscriptions import FIRST, SECOND, two_tabs  # noqa: F401
from tests.billing.test_usage_notices import use
from tests.billing.test_webhook_events import deliver_subscription, subscription_row
from tests.factories import MembershipFactory, UserFactory
from tests.mail_faults import closed_port, published_tasks, smtp_server, use_smtp

pytestmark = pytest.mark.django_db


def unsent_kinds(caplog, *addresses: str) -> list[str]:
    for record in caplog.records:
        for address in addresses:
            assert address not in str(vars(record))
    return [r.kind for r in caplog.records if r.getMessage() == "email not sent"]


def test_past_due_with_mail_down_is_applied_and_the_email_follows(
    webhooks, check_out, alice_account, settings, caplog
):
    check_out(alice_account)
    deliver_subscription(webhooks, alice_account, "subscription.created")
    mail.outbox.clear()
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING):
        event = deliver_subscription(
            webhooks, alice_account, "subscription.past_due", status="past_due"
        )
    assert event.processed_at is not None and event.error == ""
    assert subscription_row().status == "past_due"
    assert unsent_kinds(caplog, "alice@example.com") == ["past_due"]

    # The retry (a task with the event's id) sends it once mail is back.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    email_owners_about_event.apply(args=[event.pk])
    assert [m.subject for m in mail.outbox] == ["[ReqRun] Your payment is past due"]


def test_a_second_subscription_canceled_with_mail_down_stays_canceled_and_the_email_follows(
    webhooks,
    alice_account,
    two_tabs,  # noqa: F811 - the fixture imported above
    settings,
    caplog,
):
    olga = UserFactory(email="olga@example.com")
    MembershipFactory(user=olga, account=alice_account, role="owner")
    webhooks.deliver(two_tabs[FIRST])
    mail.outbox.clear()
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING), published_tasks() as published:
        event = webhooks.deliver(two_tabs[SECOND])
    assert event.processed_at is not None and event.error == ""
    assert "canceled" in event.outcome
    assert unsent_kinds(caplog, "alice@example.com", "olga@example.com") == [
        "duplicate_subscription_canceled"
    ]
    assert mail.outbox == []

    # A retry is queued with ids only.
    [retry] = [p for p in published if p.task != "billing.tasks.process_webhook_event"]
    assert retry.args and all(isinstance(arg, int) for arg in retry.args)
    assert "@example.com" not in retry.message and SECOND not in retry.message

    # Once mail is back, the task rebuilds the email from the rows: one message per owner.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    retry.run()
    assert sorted(m.to for m in mail.outbox) == [["alice@example.com"], ["olga@example.com"]]
    for message in mail.outbox:
        assert message.subject == "[ReqRun] A second subscription was canceled"
        assert SECOND in message.body and FIRST in message.body
        assert "will not charge" in message.body


def test_an_owner_address_the_server_rejects_is_skipped_once_and_for_all(
    alice_account, charlie, settings, caplog
):
    MembershipFactory(user=UserFactory(email="olga@example.com"), account=alice_account)
    charlie_account = Account.objects.get(memberships__user=charlie)
    use(alice_account, 8_000)
    use(charlie_account, 8_000)
    with smtp_server(refuse={"alice@example.com"}) as server, published_tasks() as published:
        use_smtp(settings, server.port)
        with caplog.at_level(logging.WARNING):
            send_usage_notices()
            send_usage_notices()
    assert published == []  # nothing to retry: the refusal is for good
    # Alice's co-owner and the other account are told; alice's address is not tried again.
    assert sorted(d.recipients for d in server.delivered) == [
        ["charlie@example.com"],
        ["olga@example.com"],
    ]
    assert usage_row(alice_account).notified_80_at is not None
    assert unsent_kinds(caplog, "alice@example.com", "olga@example.com") == ["usage_notice"]


def test_a_usage_notice_refused_part_way_reaches_each_owner_exactly_once(
    alice_account, settings, caplog
):
    olga = UserFactory(email="olga@example.com")
    MembershipFactory(user=olga, account=alice_account, role="owner")
    use(alice_account, 8_000)
    with (
        smtp_server(down={2}) as server,  # down (421) for the second owner's message only
        published_tasks() as published,
        caplog.at_level(logging.WARNING),
    ):
        use_smtp(settings, server.port)
        send_usage_notices()
        assert [d.recipients for d in server.delivered] == [["alice@example.com"]]
        assert unsent_kinds(caplog, "alice@example.com", "olga@example.com") == ["usage_notice"]

        # The retry carries the ids of the owners still owed the notice, never an address.
        [retry] = published
        assert retry.kwargs == {"owner_ids": [olga.pk]}
        assert "@example.com" not in retry.message

        # Mail is back: the retry and the next scans reach the second owner, and only once.
        retry.run()
        send_usage_notices()
        send_usage_notices()

    assert sorted(d.recipients for d in server.delivered) == [
        ["alice@example.com"],
        ["olga@example.com"],
    ]
    assert "8,000 of the 10,000" in server.delivered[1].data
