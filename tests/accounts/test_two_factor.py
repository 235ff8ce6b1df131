"""Two-factor sign-in: offered to every dashboard user, required of staff before the admin
opens, and the admin's sign-in is allauth's (rate-limited) one."""

import logging
import time
from io import StringIO

import pytest
from allauth.mfa import app_settings as mfa_settings
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
)
from allauth.mfa.utils import decrypt
from cryptography.fernet import Fernet
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.mfa import TOKEN_PREFIX
from accounts.models import AuditEvent
from accounts.tasks import send_second_factor_removed_email
from core import encryption
from tests.factories import PASSWORD, AccountFactory, MembershipFactory, UserFactory
from tests.mail_faults import closed_port, published_tasks, use_smtp

ADMIN_INDEX_TITLE = "Site administration"


def current_code(secret: str) -> str:
    """The authenticator app's code now, never one about to roll over mid-request."""
    period = mfa_settings.TOTP_PERIOD
    if period - time.time() % period < 2:
        time.sleep(2)
    return format_hotp_value(hotp_value(secret, int(time.time()) // period))


def stored_secret(user) -> str:
    authenticator = Authenticator.objects.get(user=user, type=Authenticator.Type.TOTP)
    return decrypt(authenticator.data["secret"])


def sign_in_with_password(client, user, *, next_url: str = ""):
    query = f"?next={next_url}" if next_url else ""
    return client.post(f"/accounts/login/{query}", {"login": user.email, "password": PASSWORD})


def confirm_password(client, *, next_url: str):
    return client.post(
        f"{reverse('account_reauthenticate')}?next={next_url}", {"password": PASSWORD}, follow=True
    )


@pytest.fixture
def operator(db):
    return UserFactory(email="olga@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def operator_with_totp(operator):
    TOTP.activate(operator, generate_totp_secret())
    return operator


def test_admin_login_is_allauths_sign_in(client):
    response = client.get("/admin/login/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/admin/"


def test_admin_login_keeps_where_the_operator_was_going(client):
    response = client.get("/admin/accounts/account/", follow=True)

    assert response.redirect_chain[-1][0] == "/accounts/login/?next=/admin/accounts/account/"
    assert ADMIN_INDEX_TITLE not in response.content.decode()


def test_admin_login_takes_no_password_itself(client, operator):
    response = client.post(
        "/admin/login/?next=/admin/", {"username": operator.email, "password": PASSWORD}
    )

    assert response["Location"] == "/accounts/login/?next=/admin/"
    assert "_auth_user_id" not in client.session


def test_staff_without_second_factor_is_sent_to_set_one_up(client, operator):
    sign_in_with_password(client, operator, next_url="/admin/")

    response = client.get("/admin/", follow=True)

    hops = [url for url, _ in response.redirect_chain]
    assert hops[:2] == ["/admin/login/?next=/admin/", reverse("mfa_activate_totp")]
    body = response.content.decode()
    assert ADMIN_INDEX_TITLE not in body
    assert "The admin needs two-factor sign-in" in body
    # allauth asks for the password again before a new authenticator is added.
    response = confirm_password(client, next_url=reverse("mfa_activate_totp"))
    assert response.status_code == 200
    assert "Activate an authenticator app" in response.content.decode()
    # Every admin page is closed, not only the index.
    assert client.get("/admin/accounts/user/").status_code == 302
    assert client.get("/admin/accounts/user/")["Location"].startswith("/admin/login/")


def test_staff_with_totp_reaches_the_admin_after_the_code(client, operator_with_totp):
    response = sign_in_with_password(client, operator_with_totp, next_url="/admin/")
    assert response["Location"] == reverse("mfa_authenticate")
    # The password alone signs nobody in.
    assert "_auth_user_id" not in client.session
    assert ADMIN_INDEX_TITLE not in client.get("/admin/", follow=True).content.decode()

    response = client.post(
        reverse("mfa_authenticate"), {"code": current_code(stored_secret(operator_with_totp))}
    )
    assert response["Location"] == "/admin/"

    response = client.get("/admin/")
    assert response.status_code == 200
    assert ADMIN_INDEX_TITLE in response.content.decode()


def test_a_wrong_code_does_not_open_the_admin(client, operator_with_totp):
    sign_in_with_password(client, operator_with_totp, next_url="/admin/")
    secret = stored_secret(operator_with_totp)
    wrong = f"{(int(current_code(secret)) + 1) % 10**6:06d}"

    response = client.post(reverse("mfa_authenticate"), {"code": wrong})

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert ADMIN_INDEX_TITLE not in client.get("/admin/", follow=True).content.decode()


def test_a_session_that_skipped_the_code_is_asked_for_it(client, operator_with_totp):
    # A session signed in without the second factor (here: directly, as a session from
    # before the authenticator was added would be) does not open the admin...
    client.force_login(operator_with_totp)

    response = client.get("/admin/", follow=True)

    assert response.redirect_chain[-1][0] == f"{reverse('mfa_reauthenticate')}?next=/admin/"
    assert ADMIN_INDEX_TITLE not in response.content.decode()

    # ...until the code is entered.
    response = client.post(
        f"{reverse('mfa_reauthenticate')}?next=/admin/",
        {"code": current_code(stored_secret(operator_with_totp))},
    )
    assert response["Location"] == "/admin/"
    assert ADMIN_INDEX_TITLE in client.get("/admin/").content.decode()


def test_non_staff_user_is_refused_the_admin(client, alice_account, alice):
    sign_in_with_password(client, alice)

    response = client.get("/admin/", follow=True)

    assert response.status_code == 403
    assert ADMIN_INDEX_TITLE not in response.content.decode()


def test_account_page_links_to_two_factor_setup(client, alice_account, alice):
    client.force_login(alice)

    body = client.get(reverse("account")).content.decode()

    assert f'href="{reverse("mfa_index")}"' in body
    assert "Set up two-factor sign-in" in body


def test_account_page_says_when_two_factor_is_on(client, alice_account, alice):
    TOTP.activate(alice, generate_totp_secret())
    client.force_login(alice)

    body = client.get(reverse("account")).content.decode()

    assert "Manage two-factor sign-in" in body


def test_activating_totp_names_reqrun_and_hands_out_recovery_codes(client, alice_account, alice):
    sign_in_with_password(client, alice)
    confirm_password(client, next_url=reverse("mfa_activate_totp"))

    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200
    assert "issuer=ReqRun" in page.context["totp_url"]
    secret = page.context["form"].secret

    response = client.post(reverse("mfa_activate_totp"), {"code": current_code(secret)})

    assert response["Location"] == reverse("mfa_view_recovery_codes")
    assert stored_secret(alice) == secret
    assert Authenticator.objects.filter(user=alice, type=Authenticator.Type.RECOVERY_CODES).exists()
    codes = client.get(reverse("mfa_view_recovery_codes")).context["unused_codes"]
    assert len(codes) == mfa_settings.RECOVERY_CODE_COUNT


def test_a_recovery_code_stands_in_for_the_app(client, alice_account, alice):
    sign_in_with_password(client, alice)
    confirm_password(client, next_url=reverse("mfa_activate_totp"))
    secret = client.get(reverse("mfa_activate_totp")).context["form"].secret
    client.post(reverse("mfa_activate_totp"), {"code": current_code(secret)})
    recovery_code = client.get(reverse("mfa_view_recovery_codes")).context["unused_codes"][0]
    client.post(reverse("account_logout"))

    assert sign_in_with_password(client, alice)["Location"] == reverse("mfa_authenticate")
    response = client.post(reverse("mfa_authenticate"), {"code": recovery_code})

    assert response["Location"] == "/app/"
    assert client.get(reverse("account")).status_code == 200


def stored_data(user, kind: str = Authenticator.Type.TOTP) -> dict:
    """What a database reader sees of the user's authenticator."""
    return Authenticator.objects.filter(user=user, type=kind).values_list("data", flat=True).get()


def signs_in_with_totp(client, user) -> bool:
    client.post(reverse("account_logout"))
    assert sign_in_with_password(client, user)["Location"] == reverse("mfa_authenticate")
    response = client.post(reverse("mfa_authenticate"), {"code": current_code(stored_secret(user))})
    return response.status_code == 302 and response["Location"] == "/app/"


def test_two_factor_secrets_are_encrypted_at_rest(client, alice_account, alice):
    secret = generate_totp_secret()
    TOTP.activate(alice, secret)
    RecoveryCodes.activate(alice)

    stored = stored_data(alice)["secret"]
    assert stored != secret
    assert secret not in stored
    assert encryption.decrypt(stored.encode()).decode() == secret
    seed = stored_data(alice, Authenticator.Type.RECOVERY_CODES)["seed"]
    plain_seed = encryption.decrypt(seed.encode()).decode()
    assert len(plain_seed) == 80 and plain_seed not in seed  # 40 random bytes, in hex
    assert signs_in_with_totp(client, alice)


def test_key_rotation_re_encrypts_two_factor_secrets(client, alice_account, alice, settings):
    secret = generate_totp_secret()
    TOTP.activate(alice, secret)
    RecoveryCodes.activate(alice)
    recovery_code = RecoveryCodes(
        Authenticator.objects.get(user=alice, type=Authenticator.Type.RECOVERY_CODES)
    ).get_unused_codes()[0]
    before = stored_data(alice)["secret"]

    new_key = Fernet.generate_key().decode()
    settings.REQRUN_ENCRYPTION_KEYS = [new_key, *settings.REQRUN_ENCRYPTION_KEYS]
    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "2 two-factor authenticator(s)" in out.getvalue()
    settings.REQRUN_ENCRYPTION_KEYS = [new_key]  # the old key is gone

    assert stored_data(alice)["secret"] != before
    assert stored_secret(alice) == secret
    assert signs_in_with_totp(client, alice)
    client.post(reverse("account_logout"))
    sign_in_with_password(client, alice)
    assert client.post(reverse("mfa_authenticate"), {"code": recovery_code})["Location"] == "/app/"


def test_a_secret_stored_before_encryption_still_works_and_rotation_encrypts_it(
    client, alice_account, alice
):
    secret = generate_totp_secret()
    Authenticator.objects.create(user=alice, type=Authenticator.Type.TOTP, data={"secret": secret})

    assert signs_in_with_totp(client, alice)

    call_command("rotate_encryption_keys", stdout=StringIO())
    stored = stored_data(alice)["secret"]
    assert secret not in stored
    assert encryption.decrypt(stored.encode()).decode() == secret
    assert stored_secret(alice) == secret  # what the sign-in reads, through the adapter


def test_two_factor_changes_are_in_the_security_log(
    client, alice_account, alice, django_capture_on_commit_callbacks
):
    sign_in_with_password(client, alice)
    confirm_password(client, next_url=reverse("mfa_activate_totp"))
    secret = client.get(reverse("mfa_activate_totp")).context["form"].secret
    # allauth sends these signals once the change is committed.
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("mfa_activate_totp"), {"code": current_code(secret)})
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("mfa_generate_recovery_codes"), REMOTE_ADDR="203.0.113.44")
    client.post(reverse("mfa_deactivate_totp"), REMOTE_ADDR="203.0.113.44")

    events = list(
        AuditEvent.objects.filter(account=alice_account, action__startswith="two_factor")
        .order_by("pk")
        .values_list("action", "target", "ip_address")
    )
    assert events == [
        ("two_factor_added", "Authenticator app", "127.0.0.1"),
        ("two_factor_added", "Recovery codes", "127.0.0.1"),
        ("two_factor_reset", "Recovery codes", "203.0.113.44"),
        ("two_factor_removed", "Authenticator app", "203.0.113.44"),
        ("two_factor_removed", "Recovery codes", "203.0.113.44"),
    ]
    page = client.get(reverse("security-log")).content.decode()
    assert "Two-factor sign-in added" in page
    assert "Two-factor codes regenerated" in page
    assert "Two-factor sign-in removed" in page


def test_turning_on_two_factor_signs_out_every_other_session(
    client, alice_account, alice, django_capture_on_commit_callbacks
):
    """A session someone got with the password alone must not outlive the second factor."""
    elsewhere = Client()
    sign_in_with_password(elsewhere, alice)
    assert elsewhere.get(reverse("dashboard")).status_code == 200
    sign_in_with_password(client, alice)
    confirm_password(client, next_url=reverse("mfa_activate_totp"))
    secret = client.get(reverse("mfa_activate_totp")).context["form"].secret

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("mfa_activate_totp"), {"code": current_code(secret)})

    response = elsewhere.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    assert client.get(reverse("dashboard")).status_code == 200


UNREADABLE = "Two-factor sign-in cannot be checked right now"


def activate_under_a_dropped_key(user) -> str:
    """`user`'s authenticator app and recovery codes as stored under a key that has since left
    REQRUN_ENCRYPTION_KEYS; returns the app's secret, which the user's phone still has."""
    dropped = Fernet(Fernet.generate_key())
    secret = generate_totp_secret()
    Authenticator.objects.create(
        user=user,
        type=Authenticator.Type.TOTP,
        data={"secret": dropped.encrypt(secret.encode()).decode()},
    )
    seed = RecoveryCodes.generate_seed()
    Authenticator.objects.create(
        user=user,
        type=Authenticator.Type.RECOVERY_CODES,
        data={"seed": dropped.encrypt(seed.encode()).decode(), "used_mask": 0},
    )
    return secret


def unreadable_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "stored value cannot be decrypted"]


def test_a_code_is_refused_with_why_when_the_secret_cannot_be_decrypted(
    client, alice_account, alice, caplog
):
    secret = activate_under_a_dropped_key(alice)
    assert sign_in_with_password(client, alice)["Location"] == reverse("mfa_authenticate")

    with caplog.at_level(logging.WARNING):
        response = client.post(reverse("mfa_authenticate"), {"code": current_code(secret)})

    assert response.status_code == 200
    assert UNREADABLE in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("dashboard"))["Location"].startswith(reverse("account_login"))
    assert [(w.user_id, w.stored) for w in unreadable_warnings(caplog)] == [
        (alice.pk, "two_factor_secret")
    ]
    assert "gAAAAA" not in caplog.text and alice.email not in caplog.text


@pytest.mark.parametrize(
    "page",
    [
        "mfa_index",
        "mfa_view_recovery_codes",
        "mfa_download_recovery_codes",
        "mfa_generate_recovery_codes",
        "mfa_reauthenticate",
    ],
)
def test_two_factor_pages_say_the_secret_cannot_be_decrypted(
    client, alice_account, alice, caplog, page
):
    secret = activate_under_a_dropped_key(alice)
    client.force_login(alice)  # a session from before the key was dropped
    confirm_password(client, next_url=reverse("account"))  # the recovery codes ask for it

    with caplog.at_level(logging.WARNING):
        if page == "mfa_reauthenticate":
            response = client.post(reverse(page), {"code": current_code(secret)})
        else:
            response = client.get(reverse(page))

    assert response.status_code == 200
    assert UNREADABLE in response.content.decode()
    assert [w.user_id for w in unreadable_warnings(caplog)] == [alice.pk]
    assert "gAAAAA" not in caplog.text


# ---------- the admin's authenticators ----------


@pytest.fixture
def alices_app(alice_account, alice) -> Authenticator:
    """Alice's authenticator app, with the recovery codes allauth hands out with it."""
    TOTP.activate(alice, generate_totp_secret())
    RecoveryCodes.activate(alice)
    return Authenticator.objects.get(user=alice, type=Authenticator.Type.TOTP)


def test_an_operator_reads_an_authenticator_but_never_its_secrets_nor_changes_it(
    operator_client, alice, charlie, alices_app
):
    """Its data is the app's secret and the recovery codes' seed (encrypted, but secrets
    still); an authenticator added or moved to another user here would be a second factor
    its user never set up."""
    secret = stored_secret(alice)
    change = reverse("admin:mfa_authenticator_change", args=[alices_app.pk])

    pages = [
        operator_client.get(change).content.decode(),
        operator_client.get(reverse("admin:mfa_authenticator_changelist")).content.decode(),
    ]
    operator_client.post(change, {"user": charlie.pk, "type": "totp", "data": "{}"})
    added = operator_client.post(
        reverse("admin:mfa_authenticator_add"),
        {"user": charlie.pk, "type": "totp", "data": '{"secret": "JBSWY3DPEHPK3PXP"}'},
    )

    assert all(TOKEN_PREFIX not in page for page in pages)
    assert 'name="data"' not in pages[0]
    assert added.status_code == 403
    assert not Authenticator.objects.filter(user=charlie).exists()
    assert Authenticator.objects.get(pk=alices_app.pk).user_id == alice.pk
    assert stored_secret(alice) == secret


def delete_on_its_page(client, authenticator):
    return client.post(
        reverse("admin:mfa_authenticator_delete", args=[authenticator.pk]),
        {"post": "yes"},
        REMOTE_ADDR="203.0.113.9",
    )


def delete_with_the_action(client, authenticator):
    return client.post(
        reverse("admin:mfa_authenticator_changelist"),
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [authenticator.pk], "post": "yes"},
        REMOTE_ADDR="203.0.113.9",
    )


@pytest.mark.parametrize("delete", [delete_on_its_page, delete_with_the_action])
def test_an_authenticator_removed_in_admin_is_in_the_security_log_and_signs_the_user_out(
    operator_client, alice, alice_account, alices_app, delete
):
    """A user who lost their phone: their recovery codes go with the app, as when they
    remove it themselves; each of their accounts' owners see who removed it; and every
    session of theirs ends, the lost phone's too, whose sign-in passed with the app."""
    other = AccountFactory()
    MembershipFactory(user=alice, account=other, role="member")
    phone = Client()  # the lost phone's browser, signed in with the app
    sign_in_with_password(phone, alice)
    phone.post(reverse("mfa_authenticate"), {"code": current_code(stored_secret(alice))})
    assert phone.get(reverse("dashboard")).status_code == 200

    response = delete(operator_client, alices_app)

    assert response.status_code == 302, response.content.decode()[:3000]
    assert not Authenticator.objects.filter(user=alice).exists()
    events = AuditEvent.objects.filter(action="two_factor_removed").values_list(
        "account", "actor__email", "target", "ip_address"
    )
    assert sorted(events) == sorted(
        (account.pk, "ops@reqrun.com", name, "203.0.113.9")
        for account in (alice_account, other)
        for name in ("Authenticator app", "Recovery codes")
    )
    assert phone.get(reverse("dashboard"))["Location"].startswith(reverse("account_login"))


REMOVED_SUBJECT = "[ReqRun] Two-factor sign-in removed from your account"


@pytest.mark.parametrize("delete", [delete_on_its_page, delete_with_the_action])
def test_the_user_is_emailed_once_when_an_operator_removes_their_second_factor(
    operator_client, alice, alices_app, delete, mailoutbox, django_capture_on_commit_callbacks
):
    """Someone else changed how they sign in: they are told who (ReqRun support, not which
    operator), when, and what to do if they did not ask for it; never a secret."""
    secret = stored_secret(alice)
    codes = RecoveryCodes(
        Authenticator.objects.get(user=alice, type=Authenticator.Type.RECOVERY_CODES)
    ).get_unused_codes()

    with django_capture_on_commit_callbacks(execute=True):
        response = delete(operator_client, alices_app)

    assert response.status_code == 302, response.content.decode()[:3000]
    [message] = mailoutbox
    assert (message.to, message.subject) == (["alice@example.com"], REMOVED_SUBJECT)
    body = " ".join(message.body.split())
    assert "ReqRun support removed two-factor sign-in from your ReqRun account" in body
    assert f"on {timezone.now():%Y-%m-%d} at " in body and " UTC" in body
    assert "you sign in with your password alone" in body
    assert "support@reqrun.com" in body
    assert "ops@reqrun.com" not in body
    assert secret not in message.body
    assert not any(code in message.body for code in codes)


def test_an_app_and_its_codes_removed_together_send_one_email(
    operator_client, alice, alices_app, mailoutbox, django_capture_on_commit_callbacks
):
    codes = Authenticator.objects.get(user=alice, type=Authenticator.Type.RECOVERY_CODES)

    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(
            reverse("admin:mfa_authenticator_changelist"),
            {"action": "delete_selected", ACTION_CHECKBOX_NAME: [codes.pk, alices_app.pk]}
            | {"post": "yes"},
        )

    assert not Authenticator.objects.filter(user=alice).exists()
    [message] = mailoutbox
    assert "removed two-factor sign-in from your ReqRun account" in " ".join(message.body.split())


def test_recovery_codes_removed_alone_are_named_and_the_app_still_works(
    operator_client, alice, alices_app, mailoutbox, django_capture_on_commit_callbacks
):
    codes = Authenticator.objects.get(user=alice, type=Authenticator.Type.RECOVERY_CODES)

    with django_capture_on_commit_callbacks(execute=True):
        delete_on_its_page(operator_client, codes)

    [message] = mailoutbox
    body = " ".join(message.body.split())
    assert "ReqRun support removed your two-factor recovery codes" in body
    assert "Your authenticator app still works" in body
    assert "support@reqrun.com" in body
    assert Authenticator.objects.filter(pk=alices_app.pk).exists()


def test_a_second_factor_removed_with_mail_down_is_removed_and_the_email_follows(
    operator_client, alice, alices_app, settings, caplog, django_capture_on_commit_callbacks
):
    """The removal stands (the user may have lost their phone); the email is queued again
    with ids and the removal's time only, and says when it was removed, not when sent."""
    removed_on = f"{timezone.now():%Y-%m-%d}"
    use_smtp(settings, closed_port())
    with (
        published_tasks() as published,
        caplog.at_level(logging.WARNING),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = delete_on_its_page(operator_client, alices_app)

    assert response.status_code == 302
    assert not Authenticator.objects.filter(user=alice).exists()
    unsent = [r for r in caplog.records if r.getMessage() == "email not sent"]
    assert [r.kind for r in unsent] == ["second_factor_removed"]
    assert "alice@example.com" not in caplog.text
    [retry] = published
    assert all(isinstance(arg, int) for arg in retry.args)
    assert "@" not in retry.message

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    send_second_factor_removed_email.apply(args=retry.args)
    [message] = mail.outbox
    assert (message.to, message.subject) == (["alice@example.com"], REMOVED_SUBJECT)
    assert f"on {removed_on} at " in message.body
