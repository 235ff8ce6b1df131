"""alice (owner), bob (member) and charlie (another tenant), signed in; alice's account
filled with something of every kind an export holds, each secret carrying a sentinel."""

from dataclasses import dataclass

import pytest

from accounts.models import Account, User
from accounts.services import record_audit_event
from billing.models import Subscription
from core import encryption
from projects.models import ApiKey, Project
from projects.upstreams import record_upstream_move, set_provider_key
from requests_app.models import Request
from tests.billing import payloads
from tests.billing.conftest import paddle_api, paddle_settings, webhooks  # noqa: F401
from tests.factories import (
    ApiKeyFactory,
    AttemptFactory,
    InvoiceFactory,
    MonthlyUsageFactory,
    ProjectFactory,
    RequestFactory,
    SubscriptionFactory,
)
from tests.projects.conftest import alice_client, bob_client, charlie_client  # noqa: F401

PROVIDER_KEY = "sk-SENTINEL-provider-key-never-exported-k9x4"
PROMPT = "PROMPT-SENTINEL-never-exported"
ANSWER = "ANSWER-SENTINEL-never-exported"
MOVED_TO = "https://llm.example.net/v1"


@dataclass
class Filled:
    account: Account
    project: Project
    api_key: ApiKey
    request: Request
    subscription: Subscription


def fill(account: Account, owner: User, *, paddle_api=None) -> Filled:  # noqa: F811
    """A project with a provider key, moved once to another host (which cleared the key; it
    was entered again), an API key, a finished request with stored bodies, usage, a live
    subscription (known to the Paddle stand-in if given), an invoice."""
    project = ProjectFactory(account=account, name="Chatbot")
    set_provider_key(project=project, provider_key=PROVIDER_KEY, actor=owner)
    upstream = project.upstreams.get()
    old_base_url, upstream.base_url = upstream.base_url, MOVED_TO
    upstream.save(update_fields=["base_url"])
    record_upstream_move(
        upstream=upstream, old_base_url=old_base_url, actor=owner, ip_address="203.0.113.7"
    )
    set_provider_key(project=project, provider_key=PROVIDER_KEY, actor=owner)
    api_key = ApiKeyFactory(project=project, name="production", actor=owner)
    request = RequestFactory(
        project=project,
        api_key=api_key,
        status="succeeded",
        attempt_count=1,
        idempotency_key="order-42",
        request_body=encryption.encrypt(f'{{"messages": "{PROMPT}"}}'.encode()),
        response_body=encryption.encrypt(f'{{"choices": "{ANSWER}"}}'.encode()),
        response_status_code=200,
        usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    )
    AttemptFactory(request=request, number=1)
    MonthlyUsageFactory(account=account, accepted_requests=1)
    subscription = SubscriptionFactory(account=account)
    if paddle_api is not None:
        paddle_api.subscriptions[subscription.paddle_subscription_id] = payloads.subscription(
            account_id=account.public_id, subscription_id=subscription.paddle_subscription_id
        )
    InvoiceFactory(account=account, paddle_subscription_id=subscription.paddle_subscription_id)
    record_audit_event(account=account, actor=owner, action="sign_in", ip_address="203.0.113.7")
    return Filled(account, project, api_key, request, subscription)


@pytest.fixture
def filled(alice, alice_account):
    return fill(alice_account, alice)
