"""End to end through the real broker and a real Celery worker: a signed webhook posted to
the web view is stored, enqueued on commit and applied by the worker."""

import pytest

from billing.models import Subscription, WebhookEvent
from projects.limits import limits_for
from projects.models import Plan
from tests.billing import payloads
from tests.conftest import wait_until
from tests.factories import AccountFactory, MembershipFactory, UserFactory

# Transactional tests get the seeded plans back from the autouse `_plans` fixture.
pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_webhook_is_processed_by_a_real_worker(celery_worker, webhooks, check_out):
    # The worker has its own settings: it maps the price through the plan row.
    Plan.objects.filter(code="team").update(paddle_price_id=payloads.PRICES["team"])
    owner = UserFactory(email="dana@example.com")
    account = AccountFactory()
    MembershipFactory(user=owner, account=account, role="owner")
    checkout = check_out(account, plan="team")
    payload = payloads.event(
        "subscription.created",
        payloads.subscription(
            account_id=account.public_id,
            price_id=payloads.PRICES["team"],
            transaction_id=checkout.paddle_transaction_id,
        ),
    )

    response = webhooks.post(payload)
    duplicate = webhooks.post(payload)

    assert response.status_code == duplicate.status_code == 200
    event = wait_until(
        lambda: WebhookEvent.objects.filter(
            event_id=payload["event_id"], processed_at__isnull=False
        ).first(),
        timeout=60,
        message="the worker never processed the webhook",
    )
    assert event.error == ""
    assert Subscription.objects.get().status == "active"
    assert limits_for(account).plan_code == "team"
