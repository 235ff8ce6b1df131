"""Sign-up, verification, welcome and password reset with a mail server that refuses
connections or never answers: every page answers, nothing half-done blocks a retry, and the
log names the kind of mail and the error, never the address or the link."""

import logging
import time

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.core.mail import get_connection

from accounts.models import User
from accounts.tasks import send_welcome_email
from tests.accounts.test_signup import STRONG, link_in, sign_up
from tests.factories import UserFactory
from tests.mail_faults import closed_port, hanging_server, published_tasks, smtp_server, use_smtp

pytestmark = pytest.mark.django_db

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


def mail_is_back(settings) -> None:
    settings.EMAIL_BACKEND = LOCMEM


def unsent_records(caplog, address: str) -> list[logging.LogRecord]:
    for record in caplog.records:
        assert address not in record.getMessage()
        assert address not in str(vars(record))
        assert "confirm-email/" not in str(vars(record))  # no link either
        assert "reset/key/" not in str(vars(record))
    return [r for r in caplog.records if r.getMessage() == "email not sent"]


def test_a_hung_mail_server_cannot_hold_a_worker_forever():
    """Django's default is no timeout: a server that accepts and never answers holds the web
    worker (or the Celery worker) that sends the mail for good."""
    timeout = get_connection("django.core.mail.backends.smtp.EmailBackend").timeout
    assert timeout is not None and 0 < timeout <= 30


def test_signup_with_mail_down_keeps_the_user_and_says_how_to_get_a_link(client, settings, caplog):
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING):
        response = sign_up(client, email="dana@example.com")
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "could not send" in page
    assert "sign in" in page.lower()
    assert "Confirmation email sent" not in page  # allauth's, which would say the opposite
    user = User.objects.get(email="dana@example.com")
    [record] = unsent_records(caplog, "dana@example.com")
    assert record.kind == "verification" and record.error == "ConnectionRefusedError"

    # Later, with mail back, signing in sends a fresh link at once and it verifies.
    mail_is_back(settings)
    client.logout()
    client.post("/accounts/login/", {"login": "dana@example.com", "password": STRONG})
    assert [m.to for m in mail.outbox] == [["dana@example.com"]]
    client.post(link_in(mail.outbox[0]))
    assert EmailAddress.objects.get(user=user).verified


def test_signup_with_a_hung_mail_server_answers_after_the_timeout(client, settings):
    with hanging_server() as port:
        use_smtp(settings, port, timeout=1)
        started = time.monotonic()
        response = sign_up(client, email="dana@example.com")
        assert time.monotonic() - started < 15
    assert response.status_code == 302
    assert "could not send" in client.get(response["Location"]).content.decode()


def test_password_reset_with_mail_down_says_so_and_a_retry_sends(client, settings, caplog):
    UserFactory(email="fay@example.com")
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING):
        response = client.post(
            "/accounts/password/reset/", {"email": "fay@example.com"}, follow=True
        )
    assert response.status_code == 200
    assert "could not send" in response.content.decode()
    [record] = unsent_records(caplog, "fay@example.com")
    assert record.kind == "password_reset"

    mail_is_back(settings)
    client.post("/accounts/password/reset/", {"email": "fay@example.com"})
    assert "/accounts/password/reset/key/" in mail.outbox[0].body


def test_password_reset_for_an_unknown_address_with_mail_down_answers_the_same(client, settings):
    UserFactory(email="fay@example.com")
    use_smtp(settings, closed_port())
    known = client.post("/accounts/password/reset/", {"email": "fay@example.com"}, follow=True)
    unknown = client.post("/accounts/password/reset/", {"email": "no@example.com"}, follow=True)
    assert unknown.status_code == known.status_code == 200
    assert unknown.content == known.content


def test_verifying_with_mail_down_verifies_and_the_welcome_goes_out_later(client, settings, caplog):
    sign_up(client, email="dana@example.com")
    confirm_path = link_in(mail.outbox[0])
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING):
        response = client.post(confirm_path)
    assert response.status_code == 302
    user = User.objects.get(email="dana@example.com")
    assert EmailAddress.objects.get(user=user).verified
    assert [r.kind for r in unsent_records(caplog, "dana@example.com")] == ["welcome"]

    # Not marked as welcomed: the welcome is still owed.
    user.refresh_from_db()
    assert user.welcomed_at is None

    # The worker's retry sends it once the mail server is back, and only once.
    mail_is_back(settings)
    send_welcome_email.apply(args=[user.pk])
    send_welcome_email.apply(args=[user.pk])
    assert [m.subject for m in mail.outbox[1:]] == ["[ReqRun] Welcome to ReqRun"]


def test_the_welcome_retry_keeps_it_owed_while_mail_is_down(settings, caplog):
    user = UserFactory(email="gus@example.com")
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING):
        send_welcome_email.apply(args=[user.pk])  # applied here, its retries run at once
    user.refresh_from_db()
    assert user.welcomed_at is None
    assert {r.kind for r in unsent_records(caplog, "gus@example.com")} == {"welcome"}


def test_a_welcome_to_an_address_refused_for_good_is_not_retried(settings, caplog):
    user = UserFactory(email="gone@example.com")
    with smtp_server(refuse={"gone@example.com"}) as server:
        use_smtp(settings, server.port)
        with caplog.at_level(logging.WARNING):
            send_welcome_email.apply(args=[user.pk])  # applied here, its retries run at once
        sessions = next(server.sessions) - 1

    assert sessions == 1  # answered 550 once: not asked again thirty times
    refused = unsent_records(caplog, "gone@example.com")
    assert [(r.kind, r.error) for r in refused] == [("welcome", "SMTPRecipientsRefused")]


def test_verifying_an_address_refused_for_good_queues_no_welcome_retry(client, settings):
    sign_up(client, email="gone@example.com")
    confirm_path = link_in(mail.outbox[0])
    with smtp_server(refuse={"gone@example.com"}) as server, published_tasks() as published:
        use_smtp(settings, server.port)
        response = client.post(confirm_path)

    assert response.status_code == 302
    assert EmailAddress.objects.get(email="gone@example.com").verified
    assert [task.task for task in published if "welcome" in task.task] == []
