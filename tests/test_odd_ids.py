"""A NUL in an id or a code (PostgreSQL text cannot hold one, so a lookup with it raises)
is answered like any other id that names nothing: 404, or the form's own refusal."""

import pytest
from django.test import Client

from accounts.views import SESSION_ACCOUNT_KEY
from billing.models import Subscription
from projects.models import Project

pytestmark = pytest.mark.django_db

NUL = "%00"


@pytest.fixture
def alice_client(alice, alice_account):
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    return client


@pytest.fixture
def project(alice_account):
    return Project.objects.create(account=alice_account, name="Chatbot")


def object_urls(project_id: str) -> list[tuple[str, str]]:
    return [
        ("get", f"/app/projects/{NUL}/"),
        ("get", f"/app/projects/{NUL}/keys/"),
        ("get", f"/app/projects/{NUL}/requests/"),
        ("post", f"/app/projects/{NUL}/rename"),
        ("post", f"/app/projects/{NUL}/policy"),
        ("post", f"/app/projects/{NUL}/failover"),
        ("post", f"/app/projects/{NUL}/upstreams/"),
        ("post", f"/app/projects/{NUL}/delete"),
        ("get", f"/app/projects/{project_id}/keys/{NUL}/revoke"),
        ("post", f"/app/projects/{project_id}/keys/{NUL}/revoke"),
        ("post", f"/app/members/invitations/{NUL}/withdraw"),
        ("get", f"/app/requests/{NUL}/"),
        ("post", f"/app/requests/{NUL}/cancel"),
        ("get", f"/app/account/export/{NUL}/download"),
        ("get", f"/app/billing/invoices/{NUL}/pdf"),
    ]


def test_a_nul_in_a_dashboard_id_is_a_404(alice_client, project):
    answers = {
        (method, url): getattr(alice_client, method)(url).status_code
        for method, url in object_urls(project.public_id)
    }

    assert {key: status for key, status in answers.items() if status != 404} == {}


def test_a_nul_in_the_account_to_switch_to_is_a_404_and_changes_nothing(alice_client):
    before = alice_client.session.get(SESSION_ACCOUNT_KEY)

    response = alice_client.post("/app/switch-account", {"account": "acc_\x00"})

    assert response.status_code == 404
    assert alice_client.session.get(SESSION_ACCOUNT_KEY) == before


def test_a_nul_in_a_plan_code_is_refused_with_a_message(alice_client):
    checkout = alice_client.post("/app/billing/checkout", {"plan": "pro\x00"})  # for Paddle.js
    change = alice_client.post("/app/billing/change-plan", {"plan": "pro\x00"}, follow=True)

    assert checkout.status_code == 400
    assert checkout.json() == {"error": "That plan cannot be bought here."}
    assert change.status_code == 200
    assert "That plan cannot be bought here." in change.content.decode()
    assert not Subscription.objects.exists()
