"""Usage notice emails at 80 % and 100 % of the monthly quota, once each per period and quota."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from billing.services import send_usage_notices
from billing.tasks import send_usage_notices as send_usage_notices_task
from projects.limits import current_period_start, limits_for, set_plan, usage_row
from projects.models import MonthlyUsage
from tests.billing import payloads
from tests.factories import set_accepted_requests

pytestmark = pytest.mark.django_db


def use(account, requests: int, period_start=None) -> MonthlyUsage:
    set_accepted_requests(account, requests, period_start)
    return usage_row(account, period_start)


def subjects() -> list[str]:
    return [message.subject for message in mail.outbox]


def test_80_then_100_percent_each_email_the_owners_once(alice_account, bob):
    use(alice_account, 7_999)  # Free: 10,000 a month
    assert send_usage_notices() == 0

    use(alice_account, 8_000)
    assert send_usage_notices() == 1
    assert send_usage_notices() == 0
    assert subjects() == ["[ReqRun] You have used 80% of this month's requests"]
    assert mail.outbox[0].to == ["alice@example.com"]
    assert "8,000 of the 10,000" in mail.outbox[0].body

    use(alice_account, 10_000)
    assert send_usage_notices_task() == 1  # the beat task runs the same service
    send_usage_notices()
    assert subjects()[1:] == ["[ReqRun] You have used all of this month's requests"]
    row = usage_row(alice_account)
    assert row.notified_80_at is not None and row.notified_100_at is not None


def test_each_owner_gets_a_message_of_their_own(alice_account, bob):
    bob.memberships.filter(account=alice_account).update(role="owner")
    use(alice_account, 8_000)

    send_usage_notices()

    # One message each: an owner does not learn the other owners' addresses from it.
    assert sorted(message.to for message in mail.outbox) == [
        ["alice@example.com"],
        ["bob@example.com"],
    ]


def test_jumping_straight_to_100_percent_sends_one_email(alice_account):
    use(alice_account, 12_000)

    send_usage_notices()
    send_usage_notices()

    assert subjects() == ["[ReqRun] You have used all of this month's requests"]


def test_the_quota_of_the_current_plan_counts(alice_account):
    set_plan(account=alice_account, plan_code="pro")  # 500,000 a month
    use(alice_account, 10_000)

    assert send_usage_notices() == 0
    assert mail.outbox == []


def test_a_new_period_notifies_again(alice_account):
    last_month = current_period_start() - timedelta(days=1)
    old = use(alice_account, 9_000, current_period_start(last_month))
    MonthlyUsage.objects.filter(pk=old.pk).update(notified_80_at=timezone.now())

    use(alice_account, 9_000)
    send_usage_notices()

    assert subjects() == ["[ReqRun] You have used 80% of this month's requests"]


def test_a_claimed_notice_is_not_sent_again_by_a_concurrent_scan(alice_account):
    row = use(alice_account, 9_000)
    # Another scanner claimed the notice between our read and our claim.
    MonthlyUsage.objects.filter(pk=row.pk).update(notified_80_at=timezone.now())

    assert send_usage_notices() == 0
    assert mail.outbox == []


def subscribe_to_pro(webhooks, check_out, account) -> dict:
    """Checkout paid: Paddle's `subscription.created` reaches the webhook; the account is on Pro."""
    checkout = check_out(account)
    entity = payloads.subscription(
        account_id=account.public_id, transaction_id=checkout.paddle_transaction_id
    )
    webhooks.deliver(payloads.event("subscription.created", entity))
    assert limits_for(account).plan_code == "pro"
    return entity


def test_an_upgrade_mid_month_notifies_at_the_new_quotas_thresholds(
    alice_account, webhooks, check_out
):
    use(alice_account, 10_000)  # all of Free's quota
    send_usage_notices()
    assert subjects() == ["[ReqRun] You have used all of this month's requests"]

    subscribe_to_pro(webhooks, check_out, alice_account)  # 500,000 a month
    assert send_usage_notices() == 0  # 2 % of Pro's quota

    use(alice_account, 400_000)
    assert send_usage_notices() == 1
    assert subjects()[1:] == ["[ReqRun] You have used 80% of this month's requests"]
    assert "400,000 of the 500,000" in mail.outbox[1].body

    use(alice_account, 500_000)
    assert send_usage_notices() == 1
    assert send_usage_notices() == 0
    assert subjects()[2:] == ["[ReqRun] You have used all of this month's requests"]
    assert "all 500,000 accepted requests" in mail.outbox[2].body


def test_a_downgrade_mid_month_notifies_at_the_new_quotas_thresholds(
    alice_account, webhooks, check_out
):
    entity = subscribe_to_pro(webhooks, check_out, alice_account)
    use(alice_account, 500_000)
    send_usage_notices()
    assert subjects() == ["[ReqRun] You have used all of this month's requests"]

    canceled = {**entity, "status": "canceled", "canceled_at": payloads.iso(payloads.now())}
    webhooks.deliver(payloads.event("subscription.canceled", canceled))  # back to Free
    assert send_usage_notices() == 1
    assert send_usage_notices() == 0

    assert subjects()[1:] == ["[ReqRun] You have used all of this month's requests"]
    assert "all 10,000 accepted requests" in mail.outbox[1].body


def test_notices_already_sent_for_the_current_quota_are_not_sent_again(
    alice_account, webhooks, check_out
):
    use(alice_account, 8_000)
    send_usage_notices()  # 80 % of Free
    subscribe_to_pro(webhooks, check_out, alice_account)
    set_plan(account=alice_account, plan_code="free")  # an operator moves it back: same quota

    assert send_usage_notices() == 0
    assert subjects() == ["[ReqRun] You have used 80% of this month's requests"]
