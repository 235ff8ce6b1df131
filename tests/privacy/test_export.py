"""Exports: what the JSON holds and never holds, progress, one build per request, the email
with its link, who may download, and the seven-day expiry."""

import hashlib
import json
import re
from datetime import date, timedelta

import pytest
from django.core import mail
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from privacy import document, services
from privacy.models import AccountExport
from projects.limits import set_plan
from requests_app.models import DailyUsage
from tests.factories import (
    AccountExportChunkFactory,
    AccountExportFactory,
    AccountFactory,
    RequestFactory,
)
from tests.privacy.conftest import ANSWER, PROMPT, PROVIDER_KEY

pytestmark = pytest.mark.django_db

EXPORT_URL = reverse("privacy-export")


def download_url(export: AccountExport) -> str:
    return reverse("privacy-export-download", kwargs={"export_id": export.public_id})


def request_and_build(client) -> AccountExport:
    """Ask through the page, then run the build as the worker would."""
    response = client.post(EXPORT_URL)
    assert response.status_code == 302
    export = AccountExport.objects.get()
    services.build_export(export_pk=export.pk)
    export.refresh_from_db()
    return export


def downloaded(client, export: AccountExport) -> tuple[dict, bytes]:
    response = client.get(download_url(export))
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    assert "attachment" in response["Content-Disposition"]
    raw = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(raw) == export.size_bytes
    return json.loads(raw), raw


def test_the_export_holds_the_account_and_no_secret(alice_client, alice, bob, filled):
    DailyUsage.objects.create(  # the totals kept for an older, purged day
        account=filled.account, project=filled.project, day=date(2026, 1, 2), requests=4, tokens=9
    )
    export = request_and_build(alice_client)
    assert export.status == "ready" and export.progress == 100
    data, raw = downloaded(alice_client, export)

    assert data["format"] == "reqrun.account_export"
    assert data["account"]["id"] == filled.account.public_id
    assert {m["email"]: m["role"] for m in data["members"]} == {
        "alice@example.com": "owner",
        "bob@example.com": "member",
    }
    [project] = data["projects"]
    assert project["id"] == filled.project.public_id
    (upstream,) = project["upstreams"]
    assert upstream["name"] == "primary"
    assert upstream["provider_key_last4"] == PROVIDER_KEY[-4:]
    assert "provider_key_encrypted" not in upstream
    # Its move to another host, as the owners' email told it (the key it cleared is not in it).
    assert upstream["host_changes"] == [
        {
            "changed_at": upstream["host_changes"][0]["changed_at"],
            "changed_by": "alice@example.com",
            "ip_address": "203.0.113.7",
            "old_origin": "https://api.openai.com:443",
            "new_origin": "https://llm.example.net:443",
            "provider_key_cleared": True,
        }
    ]
    [api_key] = project["api_keys"]
    assert api_key == {
        "id": filled.api_key.public_id,
        "name": "production",
        "display": f"rr_{filled.api_key.prefix}_…",
        "created_by": "alice@example.com",
        "created_at": api_key["created_at"],
        "last_used_at": None,
        "revoked_at": None,
    }
    [request] = data["requests"]
    assert request["id"] == filled.request.public_id
    assert request["status"] == "succeeded"
    assert request["idempotency_key"] == "order-42"
    assert request["usage"]["total_tokens"] == 8
    assert request["response_status_code"] == 200
    assert "response" not in request
    assert [attempt["number"] for attempt in request["attempts"]] == [1]
    assert data["monthly_usage"][0]["accepted_requests"] == 1
    assert data["daily_usage_of_purged_requests"] == [
        {
            "day": "2026-01-02",
            "project": filled.project.public_id,
            "requests": 4,
            "tokens": 9,
            "succeeded": 0,
            "failed": 0,
        }
    ]
    assert data["subscriptions"][0]["paddle_subscription_id"] == (
        filled.subscription.paddle_subscription_id
    )
    assert data["invoices"][0]["amount"] == "29.00 USD"
    assert data["plan"]["limits"]["retention_days"] == 3
    assert {"sign_in", "export"} <= {event["action"] for event in data["audit_events"]}

    text = raw.decode()
    secret = filled.api_key.raw_key.rsplit("_", 1)[1]
    for forbidden in (
        PROVIDER_KEY,  # the provider key, in clear
        PROMPT,  # the request body
        ANSWER,  # the response body
        secret,  # the API key's secret
        filled.api_key.secret_sha256,  # its digest
        hashlib.sha256(secret.encode()).hexdigest(),
        "gAAAAA",  # any Fernet token (an encrypted provider key or body)
    ):
        assert forbidden not in text


def test_requests_past_the_retention_window_are_left_out(alice_client, filled):
    old = RequestFactory(project=filled.project, status="succeeded")
    type(old).objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=4))
    export = request_and_build(alice_client)  # Free keeps 3 days
    data, _ = downloaded(alice_client, export)
    assert [request["id"] for request in data["requests"]] == [filled.request.public_id]


def test_the_file_is_stored_encrypted_and_compressed(alice_client, filled):
    export = request_and_build(alice_client)
    [stored] = [bytes(chunk.content) for chunk in export.chunks.all()]
    assert stored.startswith(b"gAAAAA")  # a Fernet token, not JSON
    assert filled.account.public_id.encode() not in stored
    assert export.size_bytes > 0


def test_progress_is_recorded_while_the_export_is_built(alice_client, filled, monkeypatch):
    set_plan(account=filled.account, plan_code="pro")
    for _ in range(5):
        RequestFactory(project=filled.project, status="succeeded")
    monkeypatch.setattr(document, "REQUEST_BATCH_SIZE", 2)
    alice_client.post(EXPORT_URL)
    export = AccountExport.objects.get()

    with CaptureQueriesContext(connection) as queries:
        services.build_export(export_pk=export.pk)

    progress_update = re.compile(r'UPDATE "privacy_accountexport" SET "progress" = (\d+)')
    updates = [
        int(match[1])
        for query in queries.captured_queries
        if (match := progress_update.search(query["sql"]))
    ]
    assert updates[0] == document.SECTIONS_DONE_PERCENT
    assert len(updates) >= 3 and updates == sorted(updates) and updates[-1] < 100
    export.refresh_from_db()
    assert (export.status, export.progress) == ("ready", 100)


def test_the_page_shows_progress_and_refreshes_itself(alice_client, alice_account):
    AccountExportFactory(account=alice_account, status="running", progress=40)
    response = alice_client.get(EXPORT_URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'aria-valuenow="40"' in page
    assert 'http-equiv="refresh"' in page
    assert "Request an export" not in page


def test_asking_twice_returns_the_export_in_progress(alice_client, alice_account):
    first = alice_client.post(EXPORT_URL, follow=True)
    second = alice_client.post(EXPORT_URL, follow=True)

    assert AccountExport.objects.count() == 1
    assert "Export requested" in first.content.decode()
    assert "already being prepared" in second.content.decode()
    assert AuditEvent.objects.filter(action="export", target__endswith="requested").count() == 1
    # The database holds the rule too: a second export in progress cannot exist.
    with pytest.raises(IntegrityError):
        AccountExportFactory(account=alice_account)


def test_a_second_build_of_the_same_export_does_nothing(alice_client, filled):
    export = request_and_build(alice_client)
    assert services.build_export(export_pk=export.pk) is None
    assert len(mail.outbox) == 1


def test_a_new_export_can_be_asked_once_the_last_is_ready(alice_client, filled):
    request_and_build(alice_client)
    alice_client.post(EXPORT_URL)
    assert list(AccountExport.objects.values_list("status", flat=True)) == ["pending", "ready"]


def test_the_requester_gets_an_email_with_a_working_link(alice_client, filled):
    export = request_and_build(alice_client)

    [email] = mail.outbox
    assert email.to == ["alice@example.com"]
    assert "export" in email.subject.lower()
    link = re.search(r"https?://\S+", email.body)[0]
    assert link == "http://testserver" + download_url(export)
    assert alice_client.get(link.removeprefix("http://testserver")).status_code == 200
    assert "Alice's workspace" in email.body  # not HTML-escaped in a text email


def test_downloads_are_audited(alice_client, filled):
    export = request_and_build(alice_client)
    downloaded(alice_client, export)
    assert AuditEvent.objects.filter(
        action="export", target=f"{export.public_id} downloaded"
    ).exists()


def test_a_member_who_is_not_an_owner_is_refused(bob_client, alice_account, filled):
    export = AccountExportFactory(account=alice_account, status="pending")
    services.build_export(export_pk=export.pk)

    assert bob_client.get(EXPORT_URL).status_code == 403
    assert bob_client.post(EXPORT_URL).status_code == 403
    assert bob_client.get(download_url(export)).status_code == 403
    assert AccountExport.objects.count() == 1
    assert not AuditEvent.objects.filter(target__endswith="downloaded").exists()


def test_another_tenant_gets_404(charlie_client, alice_account, filled):
    export = AccountExportFactory(account=alice_account, status="pending")
    services.build_export(export_pk=export.pk)

    assert charlie_client.get(download_url(export)).status_code == 404
    page = charlie_client.get(EXPORT_URL).content.decode()
    assert export.public_id not in page
    charlie_client.post(EXPORT_URL)  # charlie's own export, of charlie's own account
    assert AccountExport.objects.filter(account=alice_account).count() == 1


def test_signed_out_visitors_are_sent_to_sign_in(client, alice_account):
    export = AccountExportFactory(account=alice_account)
    for url in (EXPORT_URL, download_url(export)):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_an_expired_export_is_deleted_on_access(alice_client, filled):
    export = request_and_build(alice_client)
    AccountExport.objects.filter(pk=export.pk).update(expires_at=timezone.now())

    response = alice_client.get(download_url(export))

    assert response.status_code == 410
    assert "expired" in response.content.decode()
    export.refresh_from_db()
    assert export.status == "expired" and not export.chunks.exists()


def test_the_sweep_deletes_files_past_seven_days_only(alice_client, filled):
    export = request_and_build(alice_client)
    assert export.expires_at - export.finished_at == timedelta(days=7)
    fresh = AccountExportChunkFactory(
        export__account=filled.account, export__expires_at=export.expires_at
    ).export
    AccountExport.objects.filter(pk=export.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    AccountExport.objects.filter(pk=fresh.pk).update(
        expires_at=timezone.now() + timedelta(minutes=1)
    )

    assert services.expire_exports() == 1

    export.refresh_from_db()
    fresh.refresh_from_db()
    assert export.status == "expired" and not export.chunks.exists()
    assert fresh.status == "ready" and fresh.chunks.exists()


def test_an_export_not_ready_yet_says_so(alice_client, alice_account):
    export = AccountExportFactory(account=alice_account, status="pending")
    response = alice_client.get(download_url(export))
    assert response.status_code == 409
    assert "not ready yet" in response.content.decode()


def test_lost_and_stuck_builds_are_recovered(alice_account):
    now = timezone.now()
    lost = AccountExportFactory(account=alice_account, status="pending")
    AccountExport.objects.filter(pk=lost.pk).update(created_at=now - timedelta(minutes=5))
    stuck = AccountExportFactory(
        account=AccountFactory(),
        status="running",
        started_at=now - timedelta(hours=1),
        progressed_at=now - timedelta(hours=1),
    )

    assert services.recover_exports(now=now) == [lost.pk]
    stuck.refresh_from_db()
    assert stuck.status == "failed" and "interrupted" in stuck.error


def test_a_long_build_whose_progress_keeps_moving_is_not_failed(alice_account):
    """A big account's build runs far longer than the staleness period; recovery judges it by
    when its progress last moved, not by when it started."""
    now = timezone.now()
    started_at = now - 3 * services.BUILD_STALE_AFTER
    export = AccountExportFactory(account=alice_account, status="running", started_at=started_at)
    services.record_progress(export_pk=export.pk, started_at=started_at, percent=40)

    assert services.recover_exports() == []
    export.refresh_from_db()
    assert (export.status, export.progress, export.error) == ("running", 40, "")

    # Then nothing moves for the staleness period: the build is presumed lost.
    services.recover_exports(now=timezone.now() + services.BUILD_STALE_AFTER + timedelta(seconds=1))
    export.refresh_from_db()
    assert export.status == "failed" and "interrupted" in export.error


def test_a_build_whose_progress_stalled_is_failed(alice_account):
    started_at = timezone.now() - timedelta(minutes=1)
    export = AccountExportFactory(account=alice_account, status="running", started_at=started_at)
    services.record_progress(export_pk=export.pk, started_at=started_at, percent=40)
    # Simulate time: the last progress was written longer ago than the staleness period.
    AccountExport.objects.filter(pk=export.pk).update(
        progressed_at=timezone.now() - services.BUILD_STALE_AFTER - timedelta(seconds=1)
    )

    services.recover_exports()

    export.refresh_from_db()
    assert export.status == "failed" and "interrupted" in export.error
