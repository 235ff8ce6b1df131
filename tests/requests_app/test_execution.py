"""End to end: the official SDK → ReqRun (uvicorn) → a real Celery worker → the fake upstream."""

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from django.db import connection, transaction
from django.utils import timezone

from requests_app.engine import upstream
from requests_app.engine.outcomes import AttemptResult
from requests_app.engine.recovery import sweep
from requests_app.models import Attempt, Request
from tests.conftest import wait_until, waiting_for_a_lock
from tests.factories import AttemptFactory, RequestFactory
from tests.fake_upstream.payloads import ODD_TEXT

CHAT = [{"role": "user", "content": "Say hello"}]


def only_request() -> Request:
    return Request.objects.prefetch_related("attempts").get()


def finished_request() -> Request:
    return wait_until(lambda: Request.objects.filter(finished_at__isnull=False).first())


def outcomes(request: Request) -> list[tuple[str, int | None]]:
    return [(a.outcome, a.status_code) for a in request.attempts.all()]


def test_a_chat_completion_succeeds_through_reqrun(sdk, fake_upstream):
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-test", messages=CHAT)
    completion = raw.parse()

    assert completion.choices[0].message.content
    request = only_request()
    assert raw.headers["reqrun-request-id"] == request.public_id
    assert raw.headers["reqrun-attempts"] == "1"
    assert raw.headers["x-request-id"].startswith("req_fake_")
    assert request.status == "succeeded"
    assert request.usage["total_tokens"] == completion.usage.total_tokens
    assert request.request_body is None  # dropped once terminal
    assert fake_upstream.count("/v1/chat/completions") == 1
    # What the upstream was sent: the provider key, ReqRun's name, and no compression asked
    # for (a stream is relayed as the upstream sent it).
    sent = fake_upstream.requests[-1].headers
    assert sent["authorization"] == "Bearer sk-test-provider-key-1234"
    assert sent["user-agent"] == "ReqRun"
    assert "accept-encoding" not in sent


def test_transient_failures_are_retried_until_success(sdk):
    completion = sdk.chat.completions.create(model="script:503,503,200", messages=CHAT)

    assert completion.choices[0].message.content
    assert outcomes(only_request()) == [
        ("retryable_error", 503),
        ("retryable_error", 503),
        ("success", 200),
    ]


def test_retry_after_is_honoured(sdk):
    sdk.chat.completions.create(model="script:429ra1,200", messages=CHAT)

    first, second = only_request().attempts.all()
    assert first.retry_after_ms == 1000
    assert (second.started_at - first.finished_at).total_seconds() >= 0.95


def test_a_bad_request_is_returned_unchanged_and_not_retried(sdk, fake_upstream):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="script:400", messages=CHAT)

    assert raised.value.status_code == 400
    assert outcomes(only_request()) == [("fatal_error", 400)]
    assert only_request().status == "failed"
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_insufficient_quota_is_not_retried(sdk, fake_upstream):
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.chat.completions.create(model="script:429q", messages=CHAT)

    assert raised.value.code == "insufficient_quota"
    assert fake_upstream.count("/v1/chat/completions") == 1


def test_dropped_connections_and_timeouts_are_retried(sdk, tenant):
    tenant.project.attempt_timeout_seconds = 1
    tenant.project.save()

    sdk.chat.completions.create(model="script:drop,hang,200", messages=CHAT)

    assert [a.outcome for a in only_request().attempts.all()] == [
        "connection_error",
        "timeout",
        "success",
    ]


def test_an_answer_trickling_past_the_attempt_timeout_is_cut_off_and_retried(sdk, tenant):
    tenant.project.attempt_timeout_seconds = 2
    tenant.project.save()

    # Every 16 bytes arrive within the timeout, the whole answer would take ~6 s.
    sdk.chat.completions.create(model="script:slowchunks300,200", messages=CHAT)

    first, second = only_request().attempts.all()
    assert (first.outcome, first.error_code) == ("timeout", "timeout")
    assert first.latency_ms < 3500
    assert second.outcome == "success"


def call_chat(fake_upstream) -> AttemptResult:
    """One chat completion straight through the upstream client, as a worker makes it."""
    return upstream.call(
        method="POST",
        url=f"{fake_upstream.base_url}/chat/completions",
        provider_key="sk-test",
        body=b'{"model": "gpt-test", "messages": []}',
        timeout=5,
    )


def test_an_oversized_answer_is_refused_without_buffering_it(fake_upstream, settings):
    settings.REQRUN_MAX_RESPONSE_BYTES = 100  # any chat completion is longer

    result = call_chat(fake_upstream)

    assert result.error_code == "upstream_response_too_large"


def test_a_streamed_calls_error_answer_is_held_to_the_size_cap_too(fake_upstream, settings):
    settings.REQRUN_MAX_RESPONSE_BYTES = 100  # the fake's error envelope is longer
    fake_upstream.script("down", ["503"])
    body = b'{"model": "down", "stream": true, "messages": []}'
    url = f"{fake_upstream.base_url}/chat/completions"

    with upstream.open_stream(url=url, provider_key="sk-test", body=body, timeout=5) as response:
        assert response.status_code == 503
        with pytest.raises(upstream.ResponseTooLarge):
            upstream.read_answer(response, deadline=time.monotonic() + 5)


def test_each_thread_calls_upstreams_through_a_pool_of_its_own(fake_upstream):
    """Worker threads share no connection pool (and so no pool lock); a thread keeps and
    reuses its own."""
    pools, statuses = {}, []

    def call_twice():
        for _ in range(2):
            pools.setdefault(threading.get_ident(), []).append(upstream.transport())
            result = call_chat(fake_upstream)
            statuses.append(result.status_code)

    threads = [threading.Thread(target=call_twice) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * 6
    assert all(first is again for first, again in pools.values())
    assert len({id(first) for first, _ in pools.values()}) == 3


def test_when_attempts_run_out_the_last_upstream_answer_is_returned(sdk, tenant):
    tenant.project.max_attempts = 2
    tenant.project.save()

    with pytest.raises(openai.InternalServerError) as raised:
        sdk.chat.completions.create(model="script:502,503", messages=CHAT)

    assert raised.value.status_code == 503
    assert only_request().status == "failed"
    assert len(outcomes(only_request())) == 2


def test_connection_errors_to_the_end_give_a_502_upstream_error(sdk, tenant):
    tenant.project.max_attempts = 2
    tenant.project.save()

    with pytest.raises(openai.APIStatusError) as raised:
        sdk.chat.completions.create(model="script:drop", messages=CHAT)

    assert raised.value.status_code == 502
    assert raised.value.body["type"] == "upstream_error"


@pytest.mark.parametrize("model", ["script:502,503", "script:drop"])
def test_a_failure_after_reqrun_retried_tells_the_sdk_not_to_retry_it(tenant, live_api, model):
    # The SDK retries 5xx by default; each retry would be a new request with its own
    # attempts, multiplying upstream calls and quota.
    tenant.project.max_attempts = 2
    tenant.project.save()
    sdk = tenant.client(live_api.url, max_retries=2, timeout=60)

    with pytest.raises(openai.APIStatusError) as raised:
        sdk.chat.completions.create(model=model, messages=CHAT)

    assert raised.value.response.headers["x-should-retry"] == "false"
    assert Request.objects.count() == 1
    assert len(outcomes(only_request())) == 2


def test_a_succeeded_answer_says_nothing_about_retrying(sdk):
    answer = sdk.chat.completions.with_raw_response.create(model="gpt-test", messages=CHAT)

    assert "x-should-retry" not in answer.headers


def test_stream_null_means_no_stream_as_openai_reads_it(sdk, fake_upstream):
    answer = sdk.chat.completions.create(model="gpt-test", messages=CHAT, stream=None)

    assert answer.choices[0].message.content
    assert fake_upstream.requests[-1].body["stream"] is None  # sent on unchanged
    assert only_request().stream is False


def test_every_proxied_endpoint_reaches_its_upstream_path(sdk, fake_upstream):
    sdk.completions.create(model="gpt-test", prompt="hi")
    sdk.embeddings.create(model="emb-test", input="hi")
    sdk.moderations.create(input="hi")
    sdk.images.generate(model="img-test", prompt="a cat")
    sdk.responses.create(model="gpt-test", input="hi")

    for path in (
        "/v1/completions",
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/responses",
    ):
        assert fake_upstream.count(path) == 1, path
    assert Request.objects.filter(status="succeeded").count() == 5


def test_models_are_passed_through_without_being_recorded(sdk):
    models = sdk.models.list()
    assert models.data
    assert sdk.models.retrieve(models.data[0].id).id == models.data[0].id
    assert not Request.objects.exists()


def test_wait_budget_expiry_answers_202_and_the_request_still_succeeds(tenant, live_api):
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {tenant.raw_key}", "ReqRun-Wait": "1"},
        json={"model": "script:sleep2500,200", "messages": CHAT},
        timeout=30,
    )
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/requests/{body['id']}"
    assert body["status"] in ("queued", "running")

    polled = httpx.get(
        f"{live_api.url}/v1/requests/{body['id']}?wait=30",
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=40,
    )
    assert polled.json()["status"] == "succeeded"
    assert polled.json()["response"]["status_code"] == 200


def test_waiting_callers_hold_no_thread_and_no_browser_state(tenant, live_api, fake_upstream):
    # uvicorn serves the API in this process: while 30 callers wait on a slow upstream, the
    # only new threads are the 30 client threads below, not one per waiting request.
    waiting = 30
    before = threading.active_count()
    seen = []

    def call(_):
        return httpx.post(
            f"{live_api.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
            json={"model": "sleep-1500", "messages": CHAT},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=waiting) as pool:
        calls = pool.map(call, range(waiting))
        wait_until(
            lambda: fake_upstream.count("/chat/completions") >= waiting // 2,
            timeout=20,
            message="the calls did not reach the upstream",
        )
        seen.append(threading.active_count() - before - waiting)
        responses = list(calls)

    assert {response.status_code for response in responses} == {200}
    # At most the loop's default executor (where `in_thread` runs ORM work) and a few more.
    pool_threads = min(32, (os.cpu_count() or 1) + 4)
    assert seen[0] <= pool_threads + 3, f"{seen[0]} extra threads while {waiting} callers waited"
    response = responses[0]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in response.headers  # no session or CSRF cookie on the API


def test_async_mode_accepts_at_once_and_long_polls_to_the_result(tenant, live_api):
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"}
    started = time.monotonic()
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        headers=headers,
        json={"model": "script:sleep1000,200", "messages": CHAT},
        timeout=30,
    )
    assert response.status_code == 202
    assert time.monotonic() - started < 1.0

    polled = httpx.get(
        f"{live_api.url}/v1/requests/{response.json()['id']}?wait=20", headers=headers, timeout=30
    ).json()
    assert polled["status"] == "succeeded"
    assert polled["attempts"][0]["outcome"] == "success"
    assert polled["response"]["body"]["object"] == "chat.completion"
    assert set(polled) >= {
        "id",
        "object",
        "status",
        "project",
        "endpoint",
        "model",
        "stream",
        "idempotency_key",
        "created_at",
        "started_at",
        "finished_at",
        "partial",
        "attempts",
        "usage",
        "response",
        "error",
    }


def test_a_request_read_while_its_attempt_ends_shows_one_moment_of_it(tenant, live_api):
    # The request's row and its attempts are two reads: an attempt that ends between them
    # must not show a request still `running` whose every attempt has finished.
    record = RequestFactory(project=tenant.project, status="running", attempt_count=1)
    AttemptFactory(request=record, number=1, outcome="", status_code=None)
    url = f"{live_api.url}/v1/requests/{record.public_id}"
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    with ThreadPoolExecutor(max_workers=1) as pool, transaction.atomic():
        # The attempts held back until the reader has read the row; then the attempt ends.
        with connection.cursor() as cursor:
            cursor.execute("LOCK TABLE requests_app_attempt IN ACCESS EXCLUSIVE MODE")
        reading = pool.submit(httpx.get, url, headers=headers, timeout=30)
        wait_until(waiting_for_a_lock, timeout=10)
        Attempt.objects.filter(request=record).update(
            finished_at=timezone.now(), outcome="retryable_error", status_code=503
        )
        Request.objects.filter(pk=record.pk).update(status="retrying")
    polled = reading.result(timeout=30).json()

    assert polled["status"] == "running"
    assert [(a["number"], a["finished_at"], a["outcome"]) for a in polled["attempts"]] == [
        (1, None, None)
    ]
    later = httpx.get(url, headers=headers, timeout=30).json()
    assert (later["status"], later["attempts"][0]["outcome"]) == ("retrying", "retryable_error")


def test_a_cancelled_retrying_request_runs_no_further_attempt(tenant, live_api, fake_upstream):
    headers = {"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"}
    request_id = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        headers=headers,
        json={"model": "script:503ra30,200", "messages": CHAT},
    ).json()["id"]

    wait_until(lambda: Request.objects.get(public_id=request_id).status == "retrying")

    canceled = httpx.post(f"{live_api.url}/v1/requests/{request_id}/cancel", headers=headers)
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"

    again = httpx.post(f"{live_api.url}/v1/requests/{request_id}/cancel", headers=headers)
    assert again.status_code == 409
    assert again.json()["status"] == "canceled"
    assert fake_upstream.count("/v1/chat/completions") == 1
    assert Attempt.objects.count() == 1


def test_a_request_expiring_before_its_retry_answers_with_its_last_upstream_answer(
    tenant, live_api
):
    # Its attempt got a 503 and a retry 30 s later, but the deadline passes first. As when
    # attempts run out, the caller gets the upstream's last answer, and the request object
    # shows that answer with no error beside it (one outcome, not two).
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    body = {"model": "script:503ra30,200", "messages": CHAT}
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(
            httpx.post,
            f"{live_api.url}/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=60,
        )
        wait_until(lambda: Request.objects.filter(status="retrying").exists())
        now = timezone.now()
        Request.objects.filter(status="retrying").update(deadline_at=now, next_attempt_at=now)
        sweep()  # publishes the due retry; the worker finds the deadline passed
        answer = call.result(timeout=60)

    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "server_error"  # the upstream's own body
    assert answer.headers["x-should-retry"] == "false"
    url = f"{live_api.url}/v1/requests/{answer.headers['ReqRun-Request-Id']}"
    shown = httpx.get(url, headers=headers).json()
    assert shown["status"] == "expired"
    assert (shown["response"]["status_code"], shown["error"]) == (503, None)
    assert [a["outcome"] for a in shown["attempts"]] == ["retryable_error"]


def test_a_waiter_whose_request_is_canceled_is_told_not_to_retry(tenant, live_api):
    # Otherwise the SDK retries the 409 and quietly runs the canceled call again.
    sdk = tenant.client(live_api.url, max_retries=2, timeout=60)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(sdk.chat.completions.create, model="script:503ra30,200", messages=CHAT)
        wait_until(lambda: Request.objects.filter(status="retrying").exists())
        request_id = only_request().public_id
        httpx.post(
            f"{live_api.url}/v1/requests/{request_id}/cancel",
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
        )

        with pytest.raises(openai.ConflictError) as raised:
            call.result(timeout=60)

    assert raised.value.response.headers["x-should-retry"] == "false"
    assert Request.objects.count() == 1


@pytest.mark.parametrize("model", ["gpt\x00mini", "gpt\ud800mini"], ids=["nul", "lone-surrogate"])
def test_a_model_name_no_text_column_can_hold_is_recorded_readably_and_sent_unchanged(
    tenant, live_api, fake_upstream, model
):
    # json.dumps escapes both characters, so the body itself is valid UTF-8 JSON.
    body = json.dumps({"model": model, "messages": CHAT}).encode()

    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Content-Type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    assert only_request().model == "gpt\ufffdmini"
    assert fake_upstream.requests[-1].body["model"] == model


@pytest.mark.parametrize("model", [{"name": "gpt"}, ["gpt"], 4, None, True])
def test_a_model_that_is_not_text_is_recorded_as_none_given(tenant, live_api, model):
    # The upstream judges the body; ReqRun's record shows no Python repr of the value.
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": model, "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
        timeout=30,
    )

    assert response.status_code == 202, response.text
    assert response.json()["model"] == ""
    assert only_request().model == ""


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_token_counts_that_are_not_numbers_leave_the_usage_unknown(
    tenant, live_api, sdk, fake_upstream, stream
):
    fake_upstream.script("odd-usage", "200odd")
    options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}

    answer = sdk.chat.completions.create(model="odd-usage", messages=CHAT, **options)

    if stream:
        assert [chunk for chunk in answer][-1].usage.prompt_tokens == ODD_TEXT
    else:
        assert answer.usage.prompt_tokens == ODD_TEXT  # relayed as the upstream sent it
    request = finished_request()
    assert request.status == "succeeded"
    assert [a.outcome for a in request.attempts.all()] == ["success"]
    assert request.usage is None
    # The stored answer (NaN, a lone surrogate) cannot be written out as JSON again: the
    # request object shows it as text.
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    shown = httpx.get(f"{live_api.url}/v1/requests/{request.public_id}", headers=headers)
    listed = httpx.get(f"{live_api.url}/v1/requests", headers=headers)
    assert shown.status_code == 200, shown.text
    assert "NaN" in shown.json()["response"]["body"]
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["data"]] == [request.public_id]


def test_an_error_code_no_text_column_can_hold_is_recorded_readably(sdk, fake_upstream):
    fake_upstream.script("odd-code", ["503odd", "400odd"])

    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="odd-code", messages=CHAT)

    assert raised.value.code == ODD_TEXT  # the upstream's answer, relayed unchanged
    request = only_request()
    assert outcomes(request) == [("retryable_error", 503), ("fatal_error", 400)]
    assert [a.error_code for a in request.attempts.all()] == ["odd\ufffd\ufffd"] * 2
    assert request.status == "failed"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_answer_nested_deeper_than_the_parser_goes_is_relayed_and_recorded(
    tenant, live_api, fake_upstream, stream
):
    fake_upstream.script("deep", "200deep")
    options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}

    answer = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "deep", "messages": CHAT, **options},
        headers=headers,
        timeout=30,
    )

    assert answer.status_code == 200
    assert b"[" * 5000 in answer.content  # relayed as the upstream sent it
    request = finished_request()
    assert request.status == "succeeded"
    assert request.usage is None
    shown = httpx.get(f"{live_api.url}/v1/requests/{request.public_id}", headers=headers)
    assert shown.status_code == 200
    if not stream:  # a stored stream is shown as its text anyway
        assert shown.json()["response"]["body"].startswith('{"id"')  # as text: too deep


def test_an_error_nested_deeper_than_the_parser_goes_is_classified_by_its_status(
    sdk, fake_upstream
):
    fake_upstream.script("deep-error", ["503deep", "400deep"])

    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="deep-error", messages=CHAT)

    request = only_request()
    assert outcomes(request) == [("retryable_error", 503), ("fatal_error", 400)]
    assert [a.error_code for a in request.attempts.all()] == [None, None]
    assert request.status == "failed"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_answer_with_a_status_outside_http_is_a_502_and_not_relayed(tenant, live_api, stream):
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "script:600", "messages": CHAT, "stream": stream},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "invalid_status"
    request = finished_request()
    assert outcomes(request) == [("fatal_error", 600)]
    assert (request.status, request.response_body) == ("failed", None)


def test_a_model_listing_with_a_status_outside_http_is_a_502(tenant, live_api):
    response = httpx.get(
        f"{live_api.url}/v1/models/invalid-status",
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "invalid_status"


def test_a_model_id_reaches_the_upstream_as_the_sdk_sent_it(sdk, fake_upstream):
    model = sdk.models.retrieve("ft:gpt-4o:org:x")

    assert model.id == "ft:gpt-4o:org:x"  # the fake echoes the path it was asked for
    assert fake_upstream.count("/v1/models/ft:gpt-4o:org:x") == 1


@pytest.mark.parametrize("path", ["/v1/models/%2e%2e", "/v1/models/a/%2E/b", "/v1/models/a//b"])
def test_a_model_id_with_a_dot_or_empty_segment_is_a_404_and_reaches_no_upstream(
    tenant, live_api, fake_upstream, path
):
    # httpx would resolve /v1/models/.. to /v1: another path, with the provider's key.
    response = httpx.get(
        f"{live_api.url}{path}", headers={"Authorization": f"Bearer {tenant.raw_key}"}
    )

    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    assert fake_upstream.requests == []
