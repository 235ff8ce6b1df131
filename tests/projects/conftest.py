"""alice (owner), bob (member of alice's account) and charlie (another tenant), signed in,
with a project, an API key and a pending invitation in alice's account."""

import pytest

from projects.limits import set_plan
from projects.upstreams import set_provider_key
from tests.factories import ApiKeyFactory, InvitationFactory, ProjectFactory

PROVIDER_KEY = "sk-test-alice-provider-key-7f3a"


def signed_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(client, alice, alice_account):
    return signed_in(client, alice)


@pytest.fixture
def bob_client(client, bob):
    return signed_in(client, bob)


@pytest.fixture
def charlie_client(client, charlie):
    return signed_in(client, charlie)


@pytest.fixture
def alice_project(alice, alice_account):
    project = ProjectFactory(account=alice_account, name="Chatbot")
    return set_provider_key(project=project, provider_key=PROVIDER_KEY, actor=alice)


@pytest.fixture
def alice_key(alice, alice_project):
    return ApiKeyFactory(project=alice_project, name="production", actor=alice)


@pytest.fixture
def alice_invitation(alice, alice_account):
    return InvitationFactory(account=alice_account, email="dana@example.com", invited_by=alice)


@pytest.fixture
def on_pro(alice_account):
    """Pro allows 3 members, so alice can invite someone next to bob."""
    set_plan(account=alice_account, plan_code="pro")
    return alice_account


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]
