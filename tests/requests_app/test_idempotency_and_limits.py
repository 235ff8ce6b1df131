"""Idempotency keys, plan refusals and bad input: clear errors, nothing enqueued or counted."""

import gzip
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import openai
import pytest
from django.db import transaction
from django.utils import timezone

from projects.limits import accepted_requests
from projects.selectors import upstreams_of
from projects.services import create_api_key, create_project, delete_project, revoke_api_key
from projects.upstreams import remove_upstream_key, set_provider_key
from requests_app.api.selectors import usage_report
from requests_app.engine.notifications import announce_finished
from requests_app.models import Request
from tests.conftest import wait_until, waiting_for_a_lock
from tests.requests_app.conftest import (
    REFUSAL,
    end_first_attempt_refused,
    in_one_rate_limit_window,
    start_first_attempt,
)

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def post(live_api, tenant, json=None, content=None, headers=None, path="/v1/chat/completions"):
    return httpx.post(
        f"{live_api.url}{path}",
        json=json,
        content=content,
        timeout=60,
        headers={"Authorization": f"Bearer {tenant.raw_key}", **(headers or {})},
    )


def assert_openai_error(response, status: int, code: str | None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"] == code


def test_a_finished_request_is_replayed_byte_for_byte(tenant, live_api, fake_upstream):
    first = post(live_api, tenant, json=CHAT, headers={"Idempotency-Key": "order-42"})
    second = post(live_api, tenant, json=CHAT, headers={"Idempotency-Key": "order-42"})

    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["reqrun-request-id"] == first.headers["reqrun-request-id"]
    assert fake_upstream.count("/v1/chat/completions") == 1
    assert accepted_requests(tenant.account) == 1


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
def test_a_keyed_call_whose_request_ends_while_it_is_accepted_is_a_replay(
    tenant, live_api, worker, streamed
):
    # The retry found the request running, and it ended before the retry read it again:
    # it gets the finished answer, so it is a replay and says so. With zero retention the
    # retry's place among the callers owed the answer is taken under the row's lock, which
    # the test holds while it records the end (it plays the worker).
    tenant.project.zero_retention = True
    tenant.project.save()
    body = {**CHAT, "stream": streamed}
    headers = {"Idempotency-Key": f"ending-{streamed}"}
    answers: dict[str, httpx.Response] = {}

    def call(name: str) -> threading.Thread:
        def send():
            answers[name] = post(live_api, tenant, json=body, headers=headers)

        thread = threading.Thread(target=send)
        thread.start()
        return thread

    worker.stop()
    try:
        first = call("first")
        request = wait_until(lambda: Request.objects.first())
        now = start_first_attempt(request)
        with transaction.atomic():
            assert end_first_attempt_refused(request, now)
            retry = call("retry")
            wait_until(lambda: waiting_for_a_lock() == 1, message="the retry never waited")
        # Its place among the callers owed the answer came after the end: the retry, owed
        # nothing, is answered before the first caller is woken. Woken first, that caller's
        # delivery would forget the answer and leave the retry the 410 any later replay gets.
        retry.join(30)
        announce_finished(request)
        first.join(30)
    finally:
        worker.start()

    assert answers["retry"].status_code == answers["first"].status_code == 400
    assert answers["retry"].content == answers["first"].content == REFUSAL
    assert answers["retry"].headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in answers["first"].headers


def test_a_utf8_idempotency_key_is_kept_as_text_and_counted_in_characters(
    tenant, live_api, fake_upstream
):
    key = "ключ-" + "я" * 150  # 155 characters, 310 bytes
    headers = {"Idempotency-Key": key.encode()}  # as a client sends it: UTF-8 bytes

    first = post(live_api, tenant, json=CHAT, headers=headers)
    second = post(live_api, tenant, json=CHAT, headers=headers)
    listed = httpx.get(
        f"{live_api.url}/v1/requests",
        params={"idempotency_key": key},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    assert first.status_code == 200, first.text
    assert second.headers["idempotent-replayed"] == "true"
    assert [item["idempotency_key"] for item in listed.json()["data"]] == [key]
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_an_idempotency_key_that_is_not_utf8_is_a_400(tenant, live_api):
    response = post(live_api, tenant, json=CHAT, headers={"Idempotency-Key": b"caf\xe9"})

    assert_openai_error(response, 400, "invalid_idempotency_key")
    assert not Request.objects.exists()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([("Idempotency-Key", "a"), ("Idempotency-Key", "b")], "invalid_idempotency_key"),
        ([("Idempotency-Key", "a"), ("idempotency-key", "a")], "invalid_idempotency_key"),
        ([("ReqRun-Wait", "5"), ("ReqRun-Wait", "5")], "invalid_wait"),
    ],
)
def test_a_header_sent_twice_is_refused_not_joined(tenant, live_api, headers, code):
    """The server joins a repeated header's values with a comma ("a,b"), a value the caller
    never sent: an Idempotency-Key read that way would be a third key, and a retry with
    either one would run the call again."""
    name = headers[0][0]
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json=CHAT,
        timeout=60,
        headers=[("Authorization", f"Bearer {tenant.raw_key}"), *headers],
    )

    assert_openai_error(response, 400, code)
    error = response.json()["error"]
    assert error["param"] == name
    assert error["type"] == "invalid_request_error"
    assert f"{name} header must be sent once" in error["message"]
    assert response.headers["reqrun-ratelimit-limit"]
    assert not Request.objects.exists()
    assert accepted_requests(tenant.account) == 0


def test_the_stored_body_digest_is_keyed_and_a_retry_still_replays(tenant, live_api):
    """A database reader cannot confirm a guessed prompt by hashing it: the digest is keyed."""
    body = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "guess me"}]}'
    headers = {"Idempotency-Key": "keyed", "Content-Type": "application/json"}
    first = post(live_api, tenant, content=body, headers=headers)
    second = post(live_api, tenant, content=body, headers=headers)

    stored = Request.objects.get().body_sha256
    assert len(stored) == 64
    assert stored != hashlib.sha256(body).hexdigest()
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content


def test_concurrent_calls_with_one_key_execute_upstream_once(tenant, live_api, fake_upstream):
    body = {**CHAT, "model": "script:sleep700,200"}

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(
            pool.map(
                lambda _: post(live_api, tenant, json=body, headers={"Idempotency-Key": "same"}),
                range(20),
            )
        )

    assert {r.status_code for r in responses} == {200}
    assert len({r.headers["reqrun-request-id"] for r in responses}) == 1
    assert len({r.content for r in responses}) == 1
    assert fake_upstream.count("/v1/chat/completions") == 1
    assert Request.objects.count() == 1


@pytest.mark.parametrize("limit", ["monthly_requests", "pending_requests"])
def test_concurrent_calls_with_one_key_at_a_limit_all_attach(tenant, live_api, limit):
    # The account has room for one more request: the caller whose accept takes it creates
    # the request; the others, with the same key and body, repeat that call and attach to it.
    tenant.override(**{limit: 1})
    body = {**CHAT, "model": "sleep-1000"}
    headers = {"Idempotency-Key": "at-the-limit", "Prefer": "respond-async"}
    start = threading.Barrier(12)

    def call(_):
        start.wait()
        return post(live_api, tenant, json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(call, range(12)))

    assert [r.status_code for r in responses] == [202] * 12, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Request.objects.count() == 1
    assert accepted_requests(tenant.account) == 1


def test_the_same_key_with_another_body_is_refused(tenant, live_api):
    post(live_api, tenant, json=CHAT, headers={"Idempotency-Key": "k1"})
    response = post(
        live_api, tenant, json={**CHAT, "model": "other"}, headers={"Idempotency-Key": "k1"}
    )

    assert_openai_error(response, 422, "idempotency_key_reused")
    assert Request.objects.count() == 1


def test_the_same_key_and_body_on_another_endpoint_is_refused_naming_the_first(tenant, live_api):
    body = {"model": "m", "input": "x"}
    headers = {"Idempotency-Key": "k2", "Prefer": "respond-async"}
    post(live_api, tenant, json=body, headers=headers, path="/v1/embeddings")
    response = post(live_api, tenant, json=body, headers=headers, path="/v1/moderations")

    assert_openai_error(response, 422, "idempotency_key_reused")
    message = response.json()["error"]["message"]
    assert "/v1/embeddings" in message and "body" not in message  # the body was the same
    assert Request.objects.count() == 1


def test_async_call_with_a_running_key_attaches_to_the_same_request(tenant, live_api):
    body = {**CHAT, "model": "script:sleep1500,200"}
    headers = {"Idempotency-Key": "attach", "Prefer": "respond-async"}
    first = post(live_api, tenant, json=body, headers=headers)
    second = post(live_api, tenant, json=body, headers=headers)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]


def test_monthly_quota_refusal_counts_and_enqueues_nothing(tenant, live_api):
    tenant.override(monthly_requests=1)
    assert post(live_api, tenant, json=CHAT).status_code == 200

    response = post(live_api, tenant, json=CHAT)

    assert_openai_error(response, 429, "monthly_quota_exceeded")
    message = response.json()["error"]["message"]
    assert "used its 1 request for this month" in message
    resets = usage_report(tenant.account)["period_end"]
    assert f"resets on {datetime.fromtimestamp(resets, UTC):%B} 1" in message  # when to retry
    assert "00:00 UTC" in message
    assert "Upgrade" in message
    assert response.headers["x-should-retry"] == "false"
    assert Request.objects.count() == 1
    assert accepted_requests(tenant.account) == 1


def test_sdk_sees_quota_refusal_as_rate_limit_error_without_retrying(tenant, live_api):
    tenant.override(monthly_requests=0)
    client = tenant.client(live_api.url, max_retries=2)  # x-should-retry: false stops it
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**CHAT)
    assert raised.value.code == "monthly_quota_exceeded"


def test_pending_queue_cap_refuses_with_retry_after(tenant, live_api):
    tenant.override(pending_requests=1)
    held = post(
        live_api,
        tenant,
        json={**CHAT, "model": "script:sleep3000,200"},
        headers={"Prefer": "respond-async"},
    )
    assert held.status_code == 202

    response = post(live_api, tenant, json=CHAT, headers={"Prefer": "respond-async"})

    assert_openai_error(response, 429, "pending_queue_full")
    assert "already has 1 request waiting" in response.json()["error"]["message"]
    assert response.headers["retry-after"]
    assert Request.objects.count() == 1
    assert accepted_requests(tenant.account) == 1


def test_rate_limit_headers_and_refusal(tenant, live_api):
    tenant.override(requests_per_minute=2)
    in_one_rate_limit_window()
    first = post(live_api, tenant, json=CHAT, headers={"Prefer": "respond-async"})
    assert first.headers["reqrun-ratelimit-limit"] == "2"
    assert first.headers["reqrun-ratelimit-remaining"] == "1"
    assert 0 < int(first.headers["reqrun-ratelimit-reset"]) <= 60
    post(live_api, tenant, json=CHAT, headers={"Prefer": "respond-async"})

    response = post(live_api, tenant, json=CHAT)

    assert_openai_error(response, 429, "rate_limit_exceeded")
    assert int(response.headers["retry-after"]) <= 60
    assert Request.objects.count() == 2


def test_the_rate_limit_is_the_accounts_across_its_projects(tenant, live_api, fake_upstream):
    # The plan's requests per minute, like its monthly quota and pending cap, is the
    # account's: a second project is not a second allowance.
    tenant.override(requests_per_minute=1)
    second = create_project(
        account=tenant.account, name="Second", upstream_base_url=fake_upstream.base_url
    )
    set_provider_key(project=second, provider_key="sk-test-provider-key-5678")
    _, second_key = create_api_key(project=second, name="second")
    async_call = {"Prefer": "respond-async"}
    in_one_rate_limit_window()
    assert post(live_api, tenant, json=CHAT, headers=async_call).status_code == 202

    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json=CHAT,
        timeout=60,
        headers={"Authorization": f"Bearer {second_key}", **async_call},
    )

    assert_openai_error(response, 429, "rate_limit_exceeded")
    assert "for this account" in response.json()["error"]["message"]
    assert response.headers["reqrun-ratelimit-remaining"] == "0"
    assert Request.objects.count() == 1


def test_retry_after_a_rate_limit_refusal_lands_in_the_next_window(tenant, live_api):
    # Whole seconds rounded up: a client that waits Retry-After (as the OpenAI SDKs do) comes
    # back in a new window, never in the last fraction of a second of the one that refused it.
    tenant.override(requests_per_minute=1)
    in_one_rate_limit_window()
    post(live_api, tenant, json=CHAT, headers={"Prefer": "respond-async"})
    sent = time.time()

    response = post(live_api, tenant, json=CHAT, headers={"Prefer": "respond-async"})
    received = time.time()

    assert_openai_error(response, 429, "rate_limit_exceeded")
    window_ends = (sent // 60 + 1) * 60
    retry_after = int(response.headers["retry-after"])
    assert response.headers["reqrun-ratelimit-reset"] == str(retry_after)
    assert response.headers["reqrun-ratelimit-remaining"] == "0"
    assert received + retry_after >= window_ends
    assert f"Retry in {retry_after} second" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{not json"}, 400, "invalid_json"),
        ({"content": b"[1, 2]"}, 400, "invalid_body"),
        ({"content": b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"}, 400, "invalid_json"),
        # Python's parser takes these, but JSON has no such numbers (RFC 8259).
        ({"content": b'{"model": "m", "messages": [], "temperature": NaN}'}, 400, "invalid_json"),
        ({"content": b'{"model": "m", "messages": [], "top_p": -Infinity}'}, 400, "invalid_json"),
        # JSON between systems is UTF-8 (RFC 8259); Python's parser also takes UTF-16 and -32.
        ({"content": json.dumps(CHAT).encode("utf-16")}, 400, "invalid_json"),
        ({"content": json.dumps(CHAT).encode("utf-32-le")}, 400, "invalid_json"),
        (
            {"json": {"model": "e", "input": "x", "stream": True}, "path": "/v1/embeddings"},
            400,
            "stream_not_supported",
        ),
        ({"json": CHAT, "headers": {"Idempotency-Key": "x" * 256}}, 400, "invalid_idempotency_key"),
        ({"json": CHAT, "headers": {"ReqRun-Wait": "601"}}, 400, "invalid_wait"),
        ({"json": CHAT, "headers": {"ReqRun-Wait": "soon"}}, 400, "invalid_wait"),
        (
            {"json": CHAT, "headers": {"ReqRun-Wait": "soon", "Prefer": "respond-async"}},
            400,
            "invalid_wait",
        ),
        ({"content": b"{" + b" " * (10 * 1024 * 1024) + b"}"}, 413, "request_too_large"),
        (
            {
                "content": gzip.compress(json.dumps(CHAT).encode()),
                "headers": {"Content-Encoding": "gzip"},
            },
            415,
            "unsupported_content_encoding",
        ),
        (
            {"json": CHAT, "headers": {"Content-Encoding": "br"}},
            415,
            "unsupported_content_encoding",
        ),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(tenant, live_api, kwargs, status, code):
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    response = post(live_api, tenant, headers=headers, **kwargs)

    assert_openai_error(response, status, code)
    assert response.headers["reqrun-ratelimit-limit"]  # on every answer to a known key
    assert not Request.objects.exists()
    assert accepted_requests(tenant.account) == 0


def test_a_body_too_large_sent_without_its_length_is_refused_like_one_with_it(tenant, live_api):
    def chunked():  # no Content-Length: the size is known only once the body is read
        yield b'{"model": "m", "pad": "'
        yield b"x" * (10 * 1024 * 1024)
        yield b'"}'

    refused = post(live_api, tenant, content=chunked())
    keyless = httpx.post(f"{live_api.url}/v1/chat/completions", content=chunked(), timeout=60)

    assert_openai_error(refused, 413, "request_too_large")
    assert "10485760 bytes" in refused.json()["error"]["message"]  # the limit, and what to do
    assert "smaller body" in refused.json()["error"]["message"]
    assert refused.headers["reqrun-ratelimit-limit"]
    assert_openai_error(keyless, 401, "invalid_api_key")  # the key is checked first
    assert not Request.objects.exists()


def test_a_body_marked_with_the_identity_coding_is_read_as_it_is(tenant, live_api):
    headers = {"Content-Encoding": "Identity", "Prefer": "respond-async"}
    response = post(live_api, tenant, json=CHAT, headers=headers)

    assert response.status_code == 202, response.text
    assert accepted_requests(tenant.account) == 1


def test_a_project_whose_primary_upstream_has_no_provider_key_is_refused(tenant, live_api):
    remove_upstream_key(upstream=upstreams_of(tenant.project).get())

    response = post(live_api, tenant, json=CHAT)

    assert_openai_error(response, 400, "provider_key_missing")
    assert "Add one in the project's settings" in response.json()["error"]["message"]
    assert not Request.objects.exists()
    assert accepted_requests(tenant.account) == 0


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer not-a-key",
        "Basic abc",
        "Bearer rr_abc",
        "Bearer rr_abc_def",
    ],
)
def test_missing_or_malformed_keys_get_401(live_api, tenant, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{live_api.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert_openai_error(response, 401, "invalid_api_key")
    assert not Request.objects.exists()


@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic abc"])
def test_a_call_without_a_key_is_told_so_and_how_to_send_one(live_api, tenant, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = httpx.post(f"{live_api.url}/v1/chat/completions", json=CHAT, headers=headers)

    message = response.json()["error"]["message"]
    assert message.startswith("You didn't provide an API key.")
    assert "Incorrect" not in message  # no key cannot be a wrong one
    assert "Authorization: Bearer rr_" in message


def test_right_prefix_wrong_secret_and_revoked_keys_get_401(live_api, tenant, sdk):
    prefix = tenant.raw_key.split("_")[1]
    wrong = httpx.get(
        f"{live_api.url}/v1/usage", headers={"Authorization": f"Bearer rr_{prefix}_{'0' * 48}"}
    )
    assert_openai_error(wrong, 401, "invalid_api_key")

    revoke_api_key(api_key=tenant.api_key)
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(**CHAT)


def test_a_deleted_projects_key_gets_401_at_once(live_api, tenant):
    # The project's rows stay until a worker purges them; its keys stop with the click.
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    assert httpx.get(f"{live_api.url}/v1/usage", headers=headers).status_code == 200

    delete_project(project=tenant.project)

    assert_openai_error(
        httpx.get(f"{live_api.url}/v1/usage", headers=headers), 401, "invalid_api_key"
    )
    assert_openai_error(post(live_api, tenant, json=CHAT), 401, "invalid_api_key")
    assert not Request.objects.exists()


def test_suspended_account_and_project_get_403(live_api, tenant):

    tenant.project.suspended_at = timezone.now()
    tenant.project.save()
    assert_openai_error(post(live_api, tenant, json=CHAT), 403, "project_suspended")
    tenant.account.suspended_at = timezone.now()
    tenant.account.save()
    assert_openai_error(post(live_api, tenant, json=CHAT), 403, "account_suspended")
    assert not Request.objects.exists()


def test_another_tenants_request_is_404(live_api, tenant, other_tenant):
    theirs = post(live_api, other_tenant, json=CHAT).headers["reqrun-request-id"]
    for method, path in [
        ("GET", f"/v1/requests/{theirs}"),
        ("POST", f"/v1/requests/{theirs}/cancel"),
        ("GET", "/v1/requests/req_unknown"),
    ]:
        response = httpx.request(
            method, f"{live_api.url}{path}", headers={"Authorization": f"Bearer {tenant.raw_key}"}
        )
        assert_openai_error(response, 404, "not_found")
    listed = httpx.get(
        f"{live_api.url}/v1/requests", headers={"Authorization": f"Bearer {tenant.raw_key}"}
    ).json()
    assert listed["data"] == []


def test_list_paginates_newest_first_and_filters(live_api, tenant):
    ids = [
        post(live_api, tenant, json=CHAT, headers={"Idempotency-Key": f"k{n}"}).headers[
            "reqrun-request-id"
        ]
        for n in range(5)
    ]
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    page = httpx.get(f"{live_api.url}/v1/requests?limit=2", headers=auth).json()
    assert page["object"] == "list"
    assert [r["id"] for r in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True
    rest = httpx.get(
        f"{live_api.url}/v1/requests?limit=10&after={page['last_id']}", headers=auth
    ).json()
    assert [r["id"] for r in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False

    by_key = httpx.get(f"{live_api.url}/v1/requests?idempotency_key=k3", headers=auth).json()
    assert [r["id"] for r in by_key["data"]] == [ids[3]]
    assert httpx.get(f"{live_api.url}/v1/requests?status=failed", headers=auth).json()["data"] == []
    bad = httpx.get(f"{live_api.url}/v1/requests?limit=0", headers=auth)
    assert_openai_error(bad, 400, None)


def test_list_refuses_a_cursor_that_is_no_request_id_and_pages_past_one_gone(live_api, tenant):
    """`after` is a request id: anything else (a typo, another kind of id) is a 400 naming the
    parameter, not the first page again, which a client paging on would read forever. A
    well-formed id whose request is gone (deleted by retention meanwhile) still pages on:
    ids sort by creation time."""
    ids = [post(live_api, tenant, json=CHAT).headers["reqrun-request-id"] for _ in range(3)]
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    for cursor in ("zzz", "prj_01a24d6bcc6c0de18f498f1f064b", f"{ids[1]}x"):
        bad = httpx.get(f"{live_api.url}/v1/requests", params={"after": cursor}, headers=auth)
        assert_openai_error(bad, 400, None)
        assert bad.json()["error"]["param"] == "after"
        assert "request id" in bad.json()["error"]["message"]

    Request.objects.filter(public_id=ids[1]).delete()
    rest = httpx.get(f"{live_api.url}/v1/requests?after={ids[1]}", headers=auth).json()
    assert [r["id"] for r in rest["data"]] == [ids[0]]


def test_usage_reports_plan_limits_and_use(live_api, tenant):
    post(live_api, tenant, json=CHAT)
    usage = httpx.get(
        f"{live_api.url}/v1/usage", headers={"Authorization": f"Bearer {tenant.raw_key}"}
    ).json()
    assert usage["plan"] == "enterprise"
    assert usage["limits"]["monthly_requests"] == 100_000_000
    assert set(usage["limits"]) == {
        "projects",
        "api_keys_per_project",
        "monthly_requests",
        "retention_days",
        "pending_requests",
        "concurrency",
        "requests_per_minute",
        "max_attempts",
        "members",
        "upstreams_per_project",
    }
    assert usage["used"] == {"accepted_requests": 1, "pending": 0, "projects": 1}
    assert usage["period_start"] < usage["period_end"]
