"""Team members: invite by email, accept through the signed link, change roles, remove;
bad links and last-owner changes are refused with a reason and change nothing."""

import re
import time
from datetime import timedelta

import pytest
from django.core import mail, signing
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Membership
from accounts.selectors import SESSION_ACCOUNT_KEY
from projects.limits import set_plan
from projects.members import (
    INVITATION_SALT,
    INVITATIONS_PER_WINDOW,
    MembershipError,
    accept_invitation,
    invitation_token,
    leave_account,
)
from projects.models import Invitation
from tests.conftest import raised_while_held
from tests.factories import InvitationFactory, UserFactory
from tests.projects.conftest import messages_of, signed_in

pytestmark = pytest.mark.django_db


def invite(client, email="dana@example.com", role="admin"):
    return client.post(reverse("member-invite"), {"email": email, "role": role}, follow=True)


def link_path(message) -> str:
    return re.search(r"https?://[^/\s]+(/app/invitations/\S+/)", message.body).group(1)


def roles(account):
    return dict(account.memberships.values_list("user__email", "role"))


def test_invitation_end_to_end(client, alice_client, alice_account, bob, on_pro, alice_project):
    response = invite(alice_client)
    assert "Invitation sent to dana@example.com" in " ".join(messages_of(response))
    assert "dana@example.com" in response.content.decode()  # listed as pending
    [email] = mail.outbox
    assert email.to == ["dana@example.com"]
    assert 'the ReqRun account "Alice\'s workspace"' in email.body  # plain text, not HTML
    path = link_path(email)

    dana = UserFactory(email="dana@example.com")
    dana_client = signed_in(client, dana)
    page = dana_client.get(path).content.decode()
    assert "Join Alice&#x27;s workspace" in page and "as admin" in page
    assert not alice_account.memberships.filter(user=dana).exists()

    response = dana_client.post(path, follow=True)
    assert response.redirect_chain[-1][0] == reverse("dashboard")
    assert "You joined Alice's workspace as admin." in messages_of(response)
    assert roles(alice_account)["dana@example.com"] == "admin"
    assert dana_client.session[SESSION_ACCOUNT_KEY] == alice_account.public_id
    assert "Chatbot" in response.content.decode()

    reused = dana_client.post(path)
    assert "This invitation has already been used." in reused.content.decode()
    assert alice_account.memberships.filter(user=dana).count() == 1
    actions = set(AuditEvent.objects.filter(account=alice_account).values_list("action", "target"))
    assert {
        ("member_invited", "dana@example.com as admin"),
        ("member_joined", "dana@example.com as admin"),
    } <= actions


class PastSigner(signing.TimestampSigner):
    def timestamp(self):
        return signing.b62_encode(int(time.time()) - 8 * 24 * 3600)


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (
            lambda inv: PastSigner(salt=INVITATION_SALT).sign_object(inv.public_id),
            "This invitation has expired. Ask for a new one.",
        ),
        (lambda inv: invitation_token(inv)[:-2] + "xx", "This invitation link is not valid."),
        (
            lambda inv: (
                Invitation.objects.filter(pk=inv.pk).update(revoked_at="2026-01-01T00:00Z")
                and invitation_token(inv)
            ),
            "This invitation was withdrawn.",
        ),
    ],
)
def test_unusable_invitation_links_say_why(client, alice_invitation, make_token, reason):
    dana_client = signed_in(client, UserFactory(email="dana@example.com"))
    path = reverse("invitation-accept", args=[make_token(alice_invitation)])
    assert reason in dana_client.get(path).content.decode()
    assert reason in dana_client.post(path).content.decode()
    assert not Membership.objects.filter(
        user__email="dana@example.com", account=alice_invitation.account
    ).exists()


def test_invitation_for_another_address_is_refused(charlie_client, alice_invitation):
    path = reverse("invitation-accept", args=[invitation_token(alice_invitation)])
    for response in (charlie_client.get(path), charlie_client.post(path)):
        page = response.content.decode()
        assert (
            "This invitation was sent to dana@example.com, but you are signed in as "
            "charlie@example.com." in page
        )
    alice_invitation.refresh_from_db()
    assert alice_invitation.accepted_at is None
    assert not alice_invitation.account.memberships.filter(user__email="charlie@example.com")


@pytest.mark.parametrize(
    ("email", "error"),
    [
        ("not-an-email", "Enter a valid email address."),
        ("", "Enter the address to invite."),
        ("BOB@example.com", "bob@example.com is already a member of this account."),
        ("dana@example.com", "dana@example.com already has a pending invitation."),
        # A soft hyphen alone is an empty label once the domain is written for mail.
        ("erin@\u00ad.example.com", "No email can be sent to this address"),
    ],
)
def test_bad_invitations_are_refused(alice_client, bob, on_pro, alice_invitation, email, error):
    response = invite(alice_client, email=email)
    assert error in response.content.decode()
    assert Invitation.objects.count() == 1
    assert mail.outbox == []


def test_member_limit_names_the_plan(alice_client, bob):
    response = invite(alice_client)
    page = response.content.decode()
    assert "The Free plan allows 1 team member." in page
    assert f'href="{reverse("pricing")}"' in page
    assert not Invitation.objects.exists()


def test_withdraw_invitation(alice_client, alice_invitation):
    path = reverse("invitation-accept", args=[invitation_token(alice_invitation)])
    response = alice_client.post(
        reverse("invitation-revoke", args=[alice_invitation.public_id]), follow=True
    )
    assert "Invitation to dana@example.com withdrawn." in messages_of(response)
    alice_invitation.refresh_from_db()
    assert alice_invitation.revoked_at is not None
    assert AuditEvent.objects.filter(action="invitation_withdrawn").exists()
    assert "withdrawn" in alice_client.get(path).content.decode()


def test_change_role(alice_client, alice_account, bob):
    response = alice_client.post(
        reverse("member-role"), {"email": "bob@example.com", "role": "admin"}, follow=True
    )
    assert "bob@example.com is now admin." in messages_of(response)
    assert roles(alice_account)["bob@example.com"] == "admin"
    assert AuditEvent.objects.filter(
        action="role_changed", target="bob@example.com: member → admin"
    ).exists()


def test_last_owner_can_neither_step_down_nor_be_removed(alice_client, alice_account, bob):
    before = roles(alice_account)
    response = alice_client.post(
        reverse("member-role"), {"email": "alice@example.com", "role": "member"}, follow=True
    )
    assert "An account needs at least one owner" in " ".join(messages_of(response))
    response = alice_client.post(
        reverse("member-remove"), {"email": "alice@example.com"}, follow=True
    )
    assert "An account needs at least one owner" in " ".join(messages_of(response))
    assert roles(alice_account) == before


def test_remove_member_after_confirmation(alice_client, alice_account, bob, alice_project):
    confirm = alice_client.get(reverse("member-remove"), {"email": "bob@example.com"})
    assert "Remove bob@example.com from Alice&#x27;s workspace?" in confirm.content.decode()
    assert "bob@example.com" in roles(alice_account)

    response = alice_client.post(
        reverse("member-remove"), {"email": "bob@example.com"}, follow=True
    )
    assert "bob@example.com was removed from Alice's workspace." in messages_of(response)
    assert "bob@example.com" not in roles(alice_account)
    assert AuditEvent.objects.filter(action="member_removed", target="bob@example.com").exists()

    alice_client.force_login(bob)  # bob has lost access to the account's projects
    assert (
        alice_client.get(reverse("project-detail", args=[alice_project.public_id])).status_code
        == 404
    )


def test_second_owner_lets_the_first_leave(alice_client, alice, alice_account, bob):
    alice_client.post(reverse("member-role"), {"email": "bob@example.com", "role": "owner"})
    response = alice_client.post(reverse("member-remove"), {"email": "alice@example.com"})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    assert roles(alice_account) == {"bob@example.com": "owner"}


def test_invitations_beyond_the_hourly_limit_get_a_form_error(alice_client, alice_account, charlie):
    set_plan(account=alice_account, plan_code="enterprise")  # the member limit is not what stops
    for number in range(INVITATIONS_PER_WINDOW):
        response = invite(alice_client, email=f"guest{number}@example.com")
        assert f"Invitation sent to guest{number}@example.com" in " ".join(messages_of(response))

    response = invite(alice_client, email="one-too-many@example.com")

    assert response.status_code == 200
    page = response.content.decode()
    assert f"This account has sent {INVITATIONS_PER_WINDOW} invitations within the hour" in page
    assert not Invitation.objects.filter(email="one-too-many@example.com").exists()
    assert len(mail.outbox) == INVITATIONS_PER_WINDOW

    # The allowance is per account: charlie's account still invites.
    charlie_account = charlie.memberships.get().account
    set_plan(account=charlie_account, plan_code="pro")
    response = invite(signed_in(Client(), charlie), email="one-too-many@example.com")
    assert "Invitation sent to one-too-many@example.com" in " ".join(messages_of(response))


def test_an_address_too_long_to_store_is_a_form_error_and_uses_no_allowance(
    alice_client, alice_account
):
    set_plan(account=alice_account, plan_code="enterprise")
    too_long = "a" * 250 + "@example.com"

    response = invite(alice_client, email=too_long)

    assert response.status_code == 200
    assert "Enter an address of at most 254 characters." in response.content.decode()
    assert not Invitation.objects.exists()
    assert mail.outbox == []
    # The refused address took none of the hour's allowance.
    for number in range(INVITATIONS_PER_WINDOW):
        response = invite(alice_client, email=f"guest{number}@example.com")
        assert f"Invitation sent to guest{number}@example.com" in " ".join(messages_of(response))


def test_an_invitation_accepted_after_a_downgrade_stays_within_the_member_limit(
    client, alice_account, bob, on_pro, alice_invitation
):
    set_plan(account=alice_account, plan_code="free")  # 1 member; alice and bob are 2 already
    dana_client = signed_in(client, UserFactory(email="dana@example.com"))
    path = reverse("invitation-accept", args=[invitation_token(alice_invitation)])
    limit_reached = (
        "Alice&#x27;s workspace already has the 1 team member its Free plan allows. "
        "Ask an owner of the account to make room or upgrade, then open this link again."
    )

    assert limit_reached in dana_client.get(path).content.decode()
    response = dana_client.post(path)

    assert response.status_code == 200
    assert limit_reached in response.content.decode()
    assert set(roles(alice_account)) == {"alice@example.com", "bob@example.com"}
    alice_invitation.refresh_from_db()
    assert alice_invitation.accepted_at is None  # the link works again once there is room

    set_plan(account=alice_account, plan_code="team")
    response = dana_client.post(path, follow=True)
    assert "You joined Alice's workspace as member." in messages_of(response)


def test_two_invitations_accepted_at_once_take_only_the_seat_left(
    transactional_db, alice_account, bob, on_pro
):
    # Invited while the account was on a bigger plan: two invitations, one seat left on Pro.
    first, second = (
        InvitationFactory(account=alice_account, email=email)
        for email in ("dana@example.com", "erin@example.com")
    )
    dana, erin = (UserFactory(email=email) for email in ("dana@example.com", "erin@example.com"))
    raised = raised_while_held(
        lambda: accept_invitation(token=invitation_token(first), user=dana),
        lambda: accept_invitation(token=invitation_token(second), user=erin),
    )

    assert isinstance(raised, MembershipError) and "its Pro plan allows" in str(raised), raised
    assert set(roles(alice_account)) == {
        "alice@example.com",
        "bob@example.com",
        "dana@example.com",
    }


@pytest.fixture
def expired_invitation(alice_invitation):
    """dana's invitation, sent 30 days ago: its link stopped working after seven."""
    Invitation.objects.filter(pk=alice_invitation.pk).update(
        created_at=timezone.now() - timedelta(days=30)
    )
    alice_invitation.refresh_from_db()
    return alice_invitation


def test_an_expired_invitation_is_shown_as_expired_and_takes_no_seat(
    client, alice_client, bob, on_pro, expired_invitation
):
    page = alice_client.get(reverse("member-list")).content.decode()
    row = re.search(r"<tr>\s*<td>dana@example.com.*?</tr>", page, re.DOTALL).group(0)
    assert "Expired" in row
    assert "Invite again" in row and "Withdraw" in row

    dana_client = signed_in(Client(), UserFactory(email="dana@example.com"))
    path = reverse("invitation-accept", args=[invitation_token(expired_invitation)])
    assert (
        "This invitation has expired. Ask for a new one." in dana_client.post(path).content.decode()
    )

    response = invite(alice_client, email="erin@example.com")  # alice, bob and erin: Pro's 3
    assert "Invitation sent to erin@example.com" in " ".join(messages_of(response))

    response = alice_client.post(
        reverse("invitation-revoke", args=[expired_invitation.public_id]), follow=True
    )
    assert "Invitation to dana@example.com withdrawn." in messages_of(response)
    assert "<td>dana@example.com" not in response.content.decode()


def test_inviting_again_replaces_an_expired_invitation(
    client, alice_client, alice_account, bob, on_pro, expired_invitation
):
    response = invite(alice_client, email="dana@example.com", role="member")

    assert "Invitation sent to dana@example.com" in " ".join(messages_of(response))
    expired_invitation.refresh_from_db()
    assert expired_invitation.revoked_at is not None
    [pending] = Invitation.objects.filter(email="dana@example.com", revoked_at__isnull=True)
    assert pending != expired_invitation
    page = response.content.decode()
    assert page.count("<td>dana@example.com") == 1 and "Expired" not in page

    dana_client = signed_in(client, UserFactory(email="dana@example.com"))
    response = dana_client.post(link_path(mail.outbox[-1]), follow=True)
    assert "You joined Alice's workspace as member." in messages_of(response)


def test_a_member_can_leave_an_account_after_confirmation(
    bob_client, bob, alice, alice_account, alice_project
):
    page = bob_client.get(reverse("member-list")).content.decode()
    assert reverse("member-leave") in page

    confirm = bob_client.get(reverse("member-leave"))
    assert "Leave Alice&#x27;s workspace?" in confirm.content.decode()
    assert "bob@example.com" in roles(alice_account)

    response = bob_client.post(reverse("member-leave"), follow=True)
    assert "You left Alice's workspace." in messages_of(response)
    assert "bob@example.com" not in roles(alice_account)
    assert AuditEvent.objects.filter(
        account=alice_account, action="member_left", actor=bob, target="bob@example.com"
    ).exists()
    security_log = signed_in(Client(), alice).get(reverse("security-log")).content.decode()
    assert "Member left" in security_log
    assert (
        bob_client.get(reverse("project-detail", args=[alice_project.public_id])).status_code == 404
    )


def test_the_last_owner_cannot_leave(alice_client, alice_account, bob):
    before = roles(alice_account)
    response = alice_client.post(reverse("member-leave"), follow=True)
    assert "An account needs at least one owner" in " ".join(messages_of(response))
    assert roles(alice_account) == before
    assert not AuditEvent.objects.filter(action="member_left").exists()


@pytest.mark.parametrize(
    ("who", "url", "data"),
    [
        ("alice", "member-remove", {"email": "bob@example.com"}),
        ("alice", "member-role", {"email": "bob@example.com", "role": "admin"}),
        ("bob", "member-leave", {}),
    ],
)
def test_a_change_to_a_membership_that_ended_meanwhile_says_so(
    transactional_db, alice, alice_account, bob, who, url, data
):
    # A double click on Remove or Leave, or another owner's removal: the second request found
    # bob a member, then waited for the account's lock while the first one ended that.
    client = signed_in(Client(), {"alice": alice, "bob": bob}[who])
    answers = []

    raised = raised_while_held(
        lambda: leave_account(membership=Membership.objects.get(user=bob)),
        lambda: answers.append(client.post(reverse(url), data, follow=True)),
    )

    assert raised is None, raised
    assert "bob@example.com is no longer a member of Alice's workspace." in messages_of(answers[0])
    assert "bob@example.com" not in roles(alice_account)
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["member_left"]


def test_withdrawing_an_invitation_accepted_meanwhile_says_so(
    transactional_db, alice, alice_account, on_pro, alice_invitation
):
    # alice's members page still lists dana's invitation; dana accepts it while the
    # withdrawal waits for the invitation's lock.
    dana = UserFactory(email="dana@example.com")
    client = signed_in(Client(), alice)
    answers = []

    raised = raised_while_held(
        lambda: accept_invitation(token=invitation_token(alice_invitation), user=dana),
        lambda: answers.append(
            client.post(
                reverse("invitation-revoke", args=[alice_invitation.public_id]), follow=True
            )
        ),
    )

    assert raised is None, raised
    assert "dana@example.com has already joined; remove them instead." in messages_of(answers[0])
    assert roles(alice_account)["dana@example.com"] == "member"
    assert not AuditEvent.objects.filter(action="invitation_withdrawn").exists()
