"""Adding, removing or making primary an email asks for the password again (kept for five
minutes): a session someone else got hold of cannot move the account to an address whose
password-reset link they would read."""

import pytest
from allauth.account.models import EmailAddress
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from tests.conftest import reauthenticate, sign_in_to_admin, written_meanwhile
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

NEW = "alice.new@example.com"


def test_adding_an_email_asks_for_the_password_first(client, alice):
    client.force_login(alice)

    response = client.post("/accounts/email/", {"action_add": "", "email": NEW})

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/reauthenticate/")
    assert not EmailAddress.objects.filter(email=NEW).exists()

    reauthenticate(client)
    client.post("/accounts/email/", {"action_add": "", "email": NEW})

    assert EmailAddress.objects.filter(user=alice, email=NEW, verified=False).exists()


def test_making_another_address_primary_asks_for_it_too(client, alice):
    EmailAddress.objects.create(user=alice, email=NEW, verified=True, primary=False)
    client.force_login(alice)

    response = client.post("/accounts/email/", {"action_primary": "", "email": NEW})

    assert response["Location"].startswith("/accounts/reauthenticate/")
    assert EmailAddress.objects.get(email=alice.email).primary


def test_an_operator_cannot_change_a_users_email_in_admin(operator_client, alice):
    """allauth signs in and sends password resets by the user's addresses, which a new
    email typed in the admin would leave behind: the old address would still reset the
    password. The page says where the user changes it, verifying the new one first."""
    change = reverse("admin:accounts_user_change", args=[alice.pk])

    page = operator_client.get(change).content.decode()
    response = operator_client.post(
        change,
        {
            "email": NEW,
            "is_active": "on",
            "date_joined_0": "2025-01-01",
            "date_joined_1": "00:00:00",
        },
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    alice.refresh_from_db()
    assert alice.email == "alice@example.com"
    assert list(EmailAddress.objects.filter(user=alice).values_list("email", flat=True)) == [
        "alice@example.com"
    ]
    assert "/accounts/email/" in page


def test_an_operator_cannot_clear_a_users_welcome_in_admin(operator_client, alice):
    """Cleared, the welcome email would go out again at the user's next verification."""
    welcomed_at = timezone.now()
    User.objects.filter(pk=alice.pk).update(welcomed_at=welcomed_at)
    change = reverse("admin:accounts_user_change", args=[alice.pk])

    response = operator_client.post(
        change,
        {
            "is_active": "on",
            "welcomed_at_0": "",
            "welcomed_at_1": "",
            "date_joined_0": "2025-01-01",
            "date_joined_1": "00:00:00",
        },
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    alice.refresh_from_db()
    assert alice.welcomed_at == welcomed_at


def test_a_user_saved_in_admin_keeps_what_the_user_changed_meanwhile(operator_client, alice):
    """The page saves what the operator changed: the rest of the row, written back as the
    request read it, would undo a new password or a welcome claimed meanwhile (the old
    password working again, the welcome sent twice)."""
    welcomed_at = timezone.now()

    with written_meanwhile(
        User, alice.pk, password=make_password("a-new-secret"), welcomed_at=welcomed_at
    ):
        response = operator_client.post(
            reverse("admin:accounts_user_change", args=[alice.pk]),
            {"is_active": "on", "date_joined_0": "2025-01-01", "date_joined_1": "00:00:00"},
        )

    assert response.status_code == 302, response.content.decode()[:3000]
    alice = User.objects.get(pk=alice.pk)
    assert alice.date_joined.year == 2025
    assert alice.check_password("a-new-secret")
    assert alice.welcomed_at == welcomed_at


def test_an_operator_cannot_edit_a_users_addresses_in_admin(operator_client, alice):
    """allauth's own admin would let an address change, or move to another user, apart from
    User.email; there an operator reads them, and may mark one verified."""
    address = EmailAddress.objects.get(user=alice)
    unverified = EmailAddress.objects.create(user=alice, email=NEW, verified=False)

    changed = operator_client.post(
        reverse("admin:account_emailaddress_change", args=[address.pk]),
        {"user": str(alice.pk), "email": "mallory@example.com", "verified": "on"},
    )
    operator_client.post(
        reverse("admin:account_emailaddress_changelist"),
        {"action": "make_verified", ACTION_CHECKBOX_NAME: [unverified.pk]},
    )

    # Not saved either: a save writes back the row as read, undoing the user's own change
    # of their primary address landing meanwhile.
    assert changed.status_code == 403
    address.refresh_from_db()
    assert (address.email, address.primary) == ("alice@example.com", True)
    assert EmailAddress.objects.get(pk=unverified.pk).verified


def test_staff_who_may_only_view_addresses_cannot_mark_one_verified(client, alice):
    unverified = EmailAddress.objects.create(user=alice, email=NEW, verified=False)
    viewer = UserFactory(email="viewer@reqrun.com", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_emailaddress"))
    sign_in_to_admin(client, viewer)

    client.post(
        reverse("admin:account_emailaddress_changelist"),
        {"action": "make_verified", ACTION_CHECKBOX_NAME: [unverified.pk]},
    )

    assert not EmailAddress.objects.get(pk=unverified.pk).verified
