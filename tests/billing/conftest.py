"""Billing fixtures: Paddle configured for tests, its API stand-in, and signed webhook delivery."""

import pytest

from accounts.models import Account, Membership
from billing.checkout import start_checkout
from billing.models import CheckoutTransaction, WebhookEvent
from billing.tasks import process_webhook_event
from tests.billing import payloads
from tests.billing.paddle_stub import PaddleAPIStub

WEBHOOK_URL = "/billing/paddle/webhook"


@pytest.fixture
def paddle_api():
    stub = PaddleAPIStub()
    yield stub
    stub.stop()


@pytest.fixture
def paddle_settings(settings, paddle_api):
    settings.PADDLE_ENVIRONMENT = "sandbox"
    settings.PADDLE_API_KEY = "pdl_sdbx_apikey_01hv8test"
    settings.PADDLE_CLIENT_TOKEN = "test_7d1c2b3a4f5e6d7c8b9a0f1e2d3"
    settings.PADDLE_WEBHOOK_SECRET = payloads.WEBHOOK_SECRET
    settings.PADDLE_PRICES = dict(payloads.PRICES)
    settings.PADDLE_API_BASE_URL = paddle_api.url
    return settings


class Webhooks:
    """Posts webhooks signed as Paddle signs them; `deliver` also runs the processing task."""

    def __init__(self, client, capture_on_commit):
        self.client = client
        self.capture_on_commit = capture_on_commit

    def post(
        self,
        payload: dict | None = None,
        *,
        body: bytes | None = None,
        signature: str | None = None,
        timestamp: int | None = None,
        secret: str = payloads.WEBHOOK_SECRET,
    ):
        body = payloads.encode(payload) if body is None else body
        if signature is None:
            signature = payloads.sign(body, secret=secret, timestamp=timestamp)
        headers = {"Paddle-Signature": signature} if signature else {}
        return self.client.post(
            WEBHOOK_URL, data=body, content_type="application/json", headers=headers
        )

    def process(self, event_id: str) -> WebhookEvent:
        """Run the task body as a worker would (emails are sent on commit)."""
        event = WebhookEvent.objects.get(event_id=event_id)
        with self.capture_on_commit(execute=True):
            process_webhook_event(event.pk)
        event.refresh_from_db()
        return event

    def deliver(self, payload: dict) -> WebhookEvent:
        response = self.post(payload)
        assert response.status_code == 200, response.content
        return self.process(payload["event_id"])


@pytest.fixture
def webhooks(paddle_settings, client, django_capture_on_commit_callbacks):
    return Webhooks(client, django_capture_on_commit_callbacks)


@pytest.fixture
def check_out(paddle_settings):
    """What the checkout endpoint does for an account's owner, through the Paddle stand-in:
    the account's customer (created once) and a recorded transaction for `plan`."""

    def check_out(account: Account, plan: str = "pro") -> CheckoutTransaction:
        owner = Membership.objects.filter(account=account, role="owner").first().user
        return start_checkout(account=account, plan_code=plan, actor=owner)

    return check_out
