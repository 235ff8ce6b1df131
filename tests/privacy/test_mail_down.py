"""The export-ready email with a mail server that refuses connections: the export is ready
all the same, and the email follows once mail works again."""

import logging

import pytest
from django.core import mail
from django.utils import timezone

from privacy import services
from privacy.models import EXPORT_LIFETIME
from tests.mail_faults import closed_port, published_tasks, use_smtp
from tests.privacy.test_export import download_url, request_and_build

pytestmark = pytest.mark.django_db


def test_an_export_finished_with_mail_down_is_ready_and_the_email_follows(
    alice_client, filled, settings, caplog
):
    use_smtp(settings, closed_port())
    with caplog.at_level(logging.WARNING), published_tasks() as published:
        export = request_and_build(alice_client)
    assert export.status == "ready"
    unsent = [r for r in caplog.records if r.getMessage() == "email not sent"]
    assert [r.kind for r in unsent] == ["export_ready"]
    assert not any("alice@example.com" in str(vars(r)) for r in caplog.records)
    assert mail.outbox == []

    # A retry is queued with the export's id only: no address and no link in the broker.
    [retry] = [p for p in published if p.task != "privacy.tasks.build_export"]
    assert retry.args == [export.pk]
    assert "@example.com" not in retry.message and export.public_id not in retry.message

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    retry.run()
    [email] = mail.outbox
    assert email.to == ["alice@example.com"]
    assert email.subject == "[ReqRun] Your account export is ready"
    assert "http://testserver" + download_url(export) in email.body


def test_an_export_that_expired_before_mail_came_back_is_not_announced(
    alice_client, filled, settings
):
    use_smtp(settings, closed_port())
    with published_tasks() as published:
        request_and_build(alice_client)
    [retry] = [p for p in published if p.task != "privacy.tasks.build_export"]
    services.expire_exports(now=timezone.now() + EXPORT_LIFETIME)

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    retry.run()
    assert mail.outbox == []
