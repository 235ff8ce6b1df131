"""Sign-up, verification, welcome and password reset with a mail server that refuses
connections or never answers: every page answers, nothing half-done blocks a retry, and the
log names the kind of mail and the error, never the address or the link."""

import logging

import pytest
from django.core.mail import get_connection

pytestmark = pytest.mark.django_db

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


def mail_is_back(settings) -> None:
    settings.EMAIL_BACKEND = LOCMEM


def unsent_records(caplog, address: str) -> list[logging.LogRecord]:
    for record in caplog.records:
        assert address not in record.getMessage()
        assert address not in str(vars(record))
        assert "/accounts/" not in str(vars(record))  # no link either
    return [r for r in caplog.records if r.getMessage() == "email not sent"]


def test_a_hung_mail_server_cannot_hold_a_worker_forever():
    """Django's default is no timeout: a server that accepts and never answers holds the web
    worker (or the Celery worker) that sends the mail for good."""
    timeout = get_connection("django.core.mail.backends.smtp.EmailBackend").timeout
    assert timeout is not None and 0 < timeout <= 30
