"""End to end through the real broker and a real Celery worker: an export asked for in the
dashboard is built by the worker; an account deleted while the worker runs one of its
requests lets that attempt finish, then is purged, with no error in the worker."""

import json

import pytest
from django.urls import reverse

from accounts.models import Account
from accounts.services import create_account
from privacy.models import AccountExport
from projects.services import create_api_key, create_project
from projects.upstreams import set_provider_key
from requests_app.engine.accept import accept_request
from requests_app.models import Attempt, Request
from tests.conftest import wait_until
from tests.factories import PASSWORD, UserFactory
from tests.fake_upstream import FakeUpstream

# Transactional tests get the seeded plans back from the autouse `_plans` fixture.
pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_an_export_is_built_by_a_real_worker(celery_worker, client):
    owner = UserFactory(email="dana@example.com")
    account = create_account(owner=owner, name="Dana's workspace")
    create_project(account=account, name="Chatbot", actor=owner)
    client.force_login(owner)

    client.post(reverse("privacy-export"))

    export = wait_until(
        lambda: AccountExport.objects.filter(status="ready").first(),
        timeout=60,
        message="the worker never built the export",
    )
    response = client.get(
        reverse("privacy-export-download", kwargs={"export_id": export.public_id})
    )
    data = json.loads(b"".join(response.streaming_content))
    assert data["account"]["id"] == account.public_id
    assert [project["name"] for project in data["projects"]] == ["Chatbot"]


def test_deleting_while_a_request_runs_lets_it_finish_then_purges(celery_worker, client):
    log_start = celery_worker.log_path.stat().st_size if celery_worker.log_path.exists() else 0
    owner = UserFactory(email="erin@example.com")
    account = create_account(owner=owner)
    with FakeUpstream() as upstream:
        project = create_project(
            account=account, name="Default", upstream_base_url=upstream.base_url
        )
        set_provider_key(project=project, provider_key="sk-test-provider-key-1234")
        api_key, _ = create_api_key(project=project, name="test")
        body = json.dumps({"model": "sleep-8000", "messages": []}).encode()
        accepted = accept_request(
            api_key=api_key,
            endpoint="/v1/chat/completions",
            body=body,
            payload=json.loads(body),
            idempotency_key=None,
        )
        request_pk = accepted.request.pk
        wait_until(
            lambda: Request.objects.filter(pk=request_pk, status="running").exists(),
            timeout=30,
            message="the worker never started the request",
        )
        client.force_login(owner)

        response = client.post(
            reverse("privacy-delete-account"),
            {"account": account.public_id, "password": PASSWORD},
        )

        assert response.status_code == 302
        # The attempt already talking to the upstream finishes, and is recorded...
        finished = wait_until(
            lambda: Request.objects.filter(pk=request_pk).exclude(status="running").first(),
            timeout=30,
            message="the running attempt never finished",
        )
        assert finished.status == "succeeded"
        # ...then the account and everything in it goes.
        wait_until(
            lambda: not Account.objects.filter(pk=account.pk).exists(),
            timeout=60,
            message="the account was never purged",
        )
        assert upstream.count("/v1/chat/completions") == 1  # nothing retried after the cancel
    assert not Request.objects.filter(pk=request_pk).exists()
    assert not Attempt.objects.filter(request_id=request_pk).exists()
    worker_log = celery_worker.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in worker_log
    assert "purge_deleted_account" in worker_log
