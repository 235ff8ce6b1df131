"""Retention, zero retention, auth throttling, security headers and the upstream guard."""

import socket
import threading
import uuid
from datetime import UTC, timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core import encryption
from projects.upstream_guard import UpstreamNotAllowed, validate_upstream_url
from requests_app.engine.executor import execute_request
from requests_app.engine.redis_client import client as redis_client
from requests_app.engine.retention import purge_expired_data, purge_expired_records
from requests_app.engine.streams import readers_key
from requests_app.models import DailyUsage, Request
from tests.conftest import ProcfileWeb, wait_until, waiting_for_a_lock
from tests.factories import AccountPlanFactory, RequestFactory
from tests.outage import database_read_only
from tests.requests_app.conftest import (
    REFUSAL,
    end_first_attempt_refused,
    start_first_attempt,
)
from tests.tcp_proxy import FreezingProxy

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "keep it private"}]}


@pytest.mark.django_db
def test_purge_keeps_records_inside_the_window_and_deletes_those_past_it():
    now = timezone.now()
    inside = RequestFactory(status="succeeded")
    AccountPlanFactory(account=inside.account)  # Free: 3-day retention
    past = RequestFactory(status="succeeded", project=inside.project)
    running = RequestFactory(status="running", project=inside.project)
    window = timedelta(days=3)
    Request.objects.filter(pk=inside.pk).update(created_at=now - window + timedelta(minutes=1))
    Request.objects.filter(pk__in=[past.pk, running.pk]).update(
        created_at=now - window - timedelta(minutes=1)
    )

    report = purge_expired_data(now)

    assert report.records == 1
    assert set(Request.objects.values_list("pk", flat=True)) == {inside.pk, running.pk}


@pytest.mark.django_db
def test_the_purge_keeps_a_days_tokens_past_what_32_bits_hold():
    now = timezone.now()
    first = RequestFactory(status="succeeded", usage={"total_tokens": 3_000_000_000})
    AccountPlanFactory(account=first.account)  # Free: 3-day retention
    RequestFactory(status="succeeded", project=first.project, usage={"total_tokens": 3_000_000_000})
    Request.objects.update(created_at=now - timedelta(days=3, minutes=1))

    assert purge_expired_data(now).records == 2

    assert DailyUsage.objects.get(project=first.project).tokens == 6_000_000_000


def test_two_purges_at_once_keep_each_purged_requests_totals_once(transactional_db):
    """A purge that runs long overlaps the next one beat sends: between them, every purged
    request is added to its day's totals once."""
    now = timezone.now()
    first = RequestFactory(status="succeeded", usage={"total_tokens": 10})
    AccountPlanFactory(account=first.account)  # Free: 3-day retention
    RequestFactory(status="succeeded", project=first.project, usage={"total_tokens": 10})
    created = now - timedelta(days=3, minutes=1)
    Request.objects.update(created_at=created)
    day = DailyUsage.objects.create(
        account=first.account, project=first.project, day=created.astimezone(UTC).date()
    )
    purged: list[int] = []

    def purge() -> None:
        try:
            purged.append(purge_expired_records(first.account, now))
        finally:
            connection.close()

    purges = [threading.Thread(target=purge) for _ in range(2)]
    with transaction.atomic():
        # The day's row held, so both purges are inside their batch before either commits.
        DailyUsage.objects.select_for_update().get(pk=day.pk)
        for thread in purges:
            thread.start()
        wait_until(
            lambda: purged or waiting_for_a_lock() == 2,
            message="neither purge reached the day's totals",
        )
    for thread in purges:
        thread.join(30)

    assert sorted(purged) == [0, 2]
    assert not Request.objects.exists()
    day.refresh_from_db()
    assert (day.requests, day.succeeded, day.tokens) == (2, 2, 20)


@pytest.mark.django_db
def test_response_bodies_are_dropped_24_hours_after_the_end():
    now = timezone.now()
    kept = RequestFactory(
        status="succeeded",
        response_body=encryption.encrypt(b"{}"),
        response_expires_at=now + timedelta(minutes=1),
    )
    dropped = RequestFactory(
        status="succeeded",
        response_body=encryption.encrypt(b"{}"),
        response_expires_at=now - timedelta(minutes=1),
    )

    assert purge_expired_data(now).response_bodies == 1
    kept.refresh_from_db()
    dropped.refresh_from_db()
    assert kept.response_body is not None
    assert dropped.response_body is None
    assert dropped.status == "succeeded"  # the record itself stays


def test_an_answer_past_its_24_hours_is_not_shown_before_the_purge_comes(tenant, live_api):
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}
    answered = httpx.post(
        f"{live_api.url}/v1/chat/completions", json=CHAT, headers=auth, timeout=30
    )
    public_id = answered.headers["reqrun-request-id"]
    # The 24 hours are over; the purge (every few minutes) has not run yet.
    Request.objects.filter(public_id=public_id).update(
        response_expires_at=timezone.now() - timedelta(seconds=1)
    )

    shown = httpx.get(f"{live_api.url}/v1/requests/{public_id}", headers=auth).json()
    listed = httpx.get(f"{live_api.url}/v1/requests", headers=auth).json()

    assert answered.status_code == 200
    assert shown["response"] is None
    assert listed["data"][0]["id"] == public_id and listed["data"][0]["response"] is None
    assert shown["usage"] is not None  # the metadata stays


def test_zero_retention_keeps_no_response_after_delivery(tenant, live_api):
    tenant.project.zero_retention = True
    tenant.project.save()
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    waited = httpx.post(f"{live_api.url}/v1/chat/completions", json=CHAT, headers=auth, timeout=30)
    assert waited.status_code == 200
    assert waited.json()["choices"]
    record = Request.objects.get(public_id=waited.headers["reqrun-request-id"])
    assert record.response_body is None
    assert record.usage is not None  # metadata stays

    queued = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json=CHAT,
        headers={**auth, "Prefer": "respond-async"},
    ).json()
    first = httpx.get(
        f"{live_api.url}/v1/requests/{queued['id']}?wait=20", headers=auth, timeout=30
    ).json()
    assert first["response"]["status_code"] == 200  # async: kept until fetched once
    second = httpx.get(f"{live_api.url}/v1/requests/{queued['id']}", headers=auth).json()
    assert second["response"] is None


def test_zero_retention_stream_the_upstream_refused_gets_the_upstreams_answer(tenant, live_api):
    """Nothing of a refused stream went through Redis: its caller reads the answer from the
    record, which zero retention forgets only once that caller has it."""
    tenant.project.zero_retention = True
    tenant.project.save()

    with httpx.stream(
        "POST",
        f"{live_api.url}/v1/chat/completions",
        json={**CHAT, "model": "script:400", "stream": True},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    ) as answer:
        body = answer.read()

    assert answer.status_code == 400, body
    assert b"Scripted fake upstream failure (400)." in body
    assert Request.objects.get().response_body is None


def test_zero_retention_stream_the_upstream_refused_answers_every_caller_attached(
    tenant, live_api, worker
):
    """Two streamed callers of one keyed call, the second attached while it waited; then
    the upstream refuses it. Nothing went through Redis: both read the refusal from the
    record, so the first caller's delivery must not forget it while the second is still
    owed it. (The test plays the worker; the first caller's shorter wait budget makes it
    read the record first.)"""
    tenant.project.zero_retention = True
    tenant.project.save()
    url = f"{live_api.url}/v1/chat/completions"
    body = {**CHAT, "stream": True}
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "Idempotency-Key": "refused-2"}
    answers: dict[str, httpx.Response] = {}

    def call(name: str, **extra) -> threading.Thread:
        def post():
            answers[name] = httpx.post(url, json=body, headers={**headers, **extra}, timeout=30)

        thread = threading.Thread(target=post)
        thread.start()
        return thread

    worker.stop()
    try:
        callers = [call("first", **{"ReqRun-Wait": "2"})]
        request = wait_until(lambda: Request.objects.first())
        callers.append(call("attached"))
        wait_until(lambda: redis_client().get(readers_key(request.public_id)) == b"2")
        assert end_first_attempt_refused(request, start_first_attempt(request))
        for caller in callers:
            caller.join(30)
    finally:
        worker.start()

    assert [answers["first"].status_code, answers["attached"].status_code] == [400, 400]
    assert answers["first"].content == answers["attached"].content == REFUSAL
    assert Request.objects.get().response_body is None  # and no copy kept after both


def test_zero_retention_stream_whose_caller_took_its_202_is_kept_until_fetched(tenant, live_api):
    """Its wait budget ran out before the upstream's first bytes: the caller left with a
    202, as an async caller would, and nobody read the stream. Its answer is kept until
    fetched once, like any answer that reached nobody."""
    tenant.project.zero_retention = True
    tenant.project.save()
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    accepted = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={**CHAT, "model": "sleep-1500", "stream": True},
        headers={**auth, "ReqRun-Wait": "1"},
        timeout=30,
    )
    url = f"{live_api.url}/v1/requests/{accepted.headers['reqrun-request-id']}"
    fetched = httpx.get(f"{url}?wait=20", headers=auth, timeout=30).json()
    again = httpx.get(url, headers=auth).json()

    assert accepted.status_code == 202
    assert fetched["status"] == "succeeded"
    assert fetched["response"]["status_code"] == 200
    assert "data: [DONE]" in fetched["response"]["body"]
    assert again["response"] is None
    assert Request.objects.get().response_body is None


def test_zero_retention_answers_every_caller_attached_before_the_end(tenant, live_api, tmp_path):
    """Two callers of one keyed call: the first created it, the second attached while it
    ran, through another web process. With zero retention the first delivery must not take
    the answer from the caller still waiting. The second process hears no completion
    notices (its subscription goes silent), so it reads the database after the first
    caller has had the answer, as a busy or reconnecting process would."""
    tenant.project.zero_retention = True
    tenant.project.save()
    redis_url = urlsplit(settings.REDIS_URL)
    proxy = FreezingProxy(redis_url.port, marker=b"SUBSCRIBE")
    proxy.frozen.set()
    silent = redis_url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    other_web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=silent).start()
    body = {**CHAT, "model": "sleep-3000"}
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "Idempotency-Key": "attach-7"}
    answers: dict[str, httpx.Response] = {}

    def call(name: str, base_url: str) -> None:
        answers[name] = httpx.post(
            f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
        )

    try:
        first = threading.Thread(target=call, args=("first", live_api.url))
        first.start()
        wait_until(lambda: Request.objects.filter(status="running").exists())
        call("attached", other_web.url)
        first.join(60)
    finally:
        other_web.stop()
        proxy.close()

    assert answers["first"].status_code == 200
    assert "idempotent-replayed" not in answers["attached"].headers  # it did attach
    assert answers["attached"].status_code == 200, answers["attached"].text
    assert answers["attached"].content == answers["first"].content
    assert Request.objects.get().response_body is None  # and no copy kept after both


def test_zero_retention_forgets_the_answer_once_the_callers_still_waiting_have_it(tenant, live_api):
    """An attached caller whose wait budget ends takes its 202 and is owed nothing more:
    the caller that waited on is the last to be owed the answer, and forgets it."""
    tenant.project.zero_retention = True
    tenant.project.save()
    url = f"{live_api.url}/v1/chat/completions"
    body = {**CHAT, "model": "sleep-2000"}
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "Idempotency-Key": "attach-8"}
    answers: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(httpx.post(url, json=body, headers=headers, timeout=60))
    )
    first.start()
    wait_until(lambda: Request.objects.filter(status="running").exists())

    impatient = httpx.post(url, json=body, headers={**headers, "ReqRun-Wait": "1"}, timeout=60)
    first.join(60)

    assert impatient.status_code == 202
    assert answers[0].status_code == 200
    assert Request.objects.get().response_body is None


def test_zero_retention_waiter_whose_budget_ends_on_a_read_only_database_gets_its_202(
    tenant, live_api
):
    """Its place among the callers owed the answer cannot be given back then; the caller
    still gets the 202 every waiter gets in an outage, and the request finishes later."""
    tenant.project.zero_retention = True
    tenant.project.save()
    url = f"{live_api.url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "ReqRun-Wait": "2"}
    answers: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            httpx.post(url, json={**CHAT, "model": "sleep-4000"}, headers=headers, timeout=60)
        )
    )
    caller.start()
    wait_until(lambda: Request.objects.filter(status="running").exists())

    with database_read_only():
        caller.join(30)

    assert answers[0].status_code == 202, answers[0].text
    assert wait_until(lambda: Request.objects.get().status == "succeeded", timeout=30)


def test_repeated_bad_keys_are_throttled_per_key_prefix(tenant, live_api):
    prefix = tenant.raw_key.split("_")[1]
    bad = {"Authorization": f"Bearer rr_{prefix}_{'0' * 48}"}
    statuses = [httpx.get(f"{live_api.url}/v1/usage", headers=bad).status_code for _ in range(11)]
    assert statuses[:10] == [401] * 10
    assert statuses[10] == 429
    refused = httpx.get(f"{live_api.url}/v1/usage", headers=bad)
    assert refused.json()["error"]["code"] == "too_many_auth_failures"
    assert int(refused.headers["retry-after"]) > 0


def test_the_right_secret_always_passes_however_often_its_prefix_was_tried(tenant, live_api):
    prefix = tenant.raw_key.split("_")[1]
    bad = {"Authorization": f"Bearer rr_{prefix}_{'0' * 48}"}
    for _ in range(15):  # someone who saw the prefix tries to lock the owner out
        httpx.get(f"{live_api.url}/v1/usage", headers=bad)

    owner = httpx.get(
        f"{live_api.url}/v1/usage", headers={"Authorization": f"Bearer {tenant.raw_key}"}
    )
    assert owner.status_code == 200
    assert httpx.get(f"{live_api.url}/v1/usage", headers=bad).status_code == 429


def test_security_headers_on_pages(client, settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    response = client.get("/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self' https://cdn.paddle.com" in policy
    assert "frame-ancestors 'none'" in policy
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert response["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/v1",
        "https://10.1.2.3/v1",
        "https://169.254.169.254/v1",
        "https://[::1]/v1",
        "https://localhost/v1",
        "http://api.openai.com/v1",
        "https://user:pass@api.example.com/v1",
    ],
)
def test_private_or_plain_upstreams_are_refused(settings, url):
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = False
    with pytest.raises(UpstreamNotAllowed):
        validate_upstream_url(url)


def test_a_dns_name_resolving_to_a_private_address_is_refused(settings):
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = False
    assert socket.gethostbyname("localhost").startswith("127.")
    with pytest.raises(UpstreamNotAllowed, match="private"):
        validate_upstream_url("https://localhost:8443/v1")


def test_the_guard_holds_at_connect_time(tenant, settings, fake_upstream):
    """A project saved while private upstreams were allowed cannot reach one once they are not."""
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = False
    record = RequestFactory(
        project=tenant.project,
        account=tenant.account,
        request_body=encryption.encrypt(b'{"model": "gpt-test"}'),
    )

    execute_request(record.pk)

    record.refresh_from_db()
    assert record.status == "failed"
    assert record.attempts.get().error_code == "upstream_not_allowed"
    assert fake_upstream.count() == 0


def test_upstream_redirects_are_not_followed(tenant, live_api, fake_upstream):
    fake_upstream.script("redirect-me", ["302"])
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={**CHAT, "model": "redirect-me"},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )
    assert response.status_code == 502  # said so, not passed on (test_odd_upstream_answers)
    assert response.json()["error"]["code"] == "upstream_redirected"
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_no_plaintext_secret_or_body_in_any_table(tenant, live_api):
    sentinel = f"SENTINEL-{uuid.uuid4()}"
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}
    httpx.post(
        f"{live_api.url}/v1/chat/completions",
        timeout=30,
        headers=auth,
        json={"model": "gpt-test", "messages": [{"role": "user", "content": sentinel}]},
    )
    httpx.post(
        f"{live_api.url}/v1/chat/completions",
        headers={**auth, "Prefer": "respond-async"},
        json={"model": "script:503ra30", "messages": [{"role": "user", "content": sentinel}]},
    )

    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [row[0] for row in cursor.fetchall()]
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - our own table names
            dump = repr(cursor.fetchall())
            for secret in (sentinel, tenant.raw_key, "sk-test-provider-key-1234"):
                assert secret not in dump, f"{secret[:12]}… found in {table}"
