"""The security log: the account's audit events with who, what, when and from which IP,
for owners only."""

import pytest
from django.urls import reverse

from accounts.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_owner_sees_who_did_what_from_where(alice_client, alice_key, charlie):
    alice_client.post(
        reverse("api-key-revoke", args=[alice_key.project.public_id, alice_key.public_id]),
        REMOTE_ADDR="203.0.113.7",
    )
    response = alice_client.get(reverse("security-log"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "API key revoked" in page and "API key created" in page
    assert "Provider key set" in page
    assert "alice@example.com" in page
    assert "203.0.113.7" in page
    assert alice_key.public_id in page
    assert "charlie@example.com" not in page  # another tenant's sign-in is not here
    event = AuditEvent.objects.get(action="api_key_revoked")
    assert (event.actor.email, event.ip_address) == ("alice@example.com", "203.0.113.7")


def test_only_owners_see_it(bob_client, alice_account):
    response = bob_client.get(reverse("security-log"))
    assert response.status_code == 403
    assert "Only owners of this account" in response.content.decode()
    assert b"Security log" not in bob_client.get(reverse("account")).content


def test_empty_state(alice_client, alice_account):
    AuditEvent.objects.all().delete()
    assert "Nothing recorded yet" in alice_client.get(reverse("security-log")).content.decode()
