"""Failover end to end: the SDK → ReqRun → real workers → two or three fake upstreams.

The tenant's primary is the session's fake upstream; `fallback-1` (and `fallback-2`) are
upstreams of their own, each a real HTTP server on a loopback port.
"""

import socket
import threading
from datetime import timedelta

import httpx
import openai
import pytest
from cryptography.fernet import Fernet
from django.db import IntegrityError, connection
from django.utils import timezone

from accounts.models import AuditEvent
from core import encryption
from projects.models import Upstream
from projects.upstreams import add_upstream, remove_upstream_key
from requests_app.engine import breaker
from requests_app.engine.executor import execute_request
from requests_app.engine.outcomes import AttemptResult
from requests_app.engine.recovery import sweep
from requests_app.models import Attempt, Request
from tests.conftest import wait_until
from tests.factories import RequestFactory
from tests.fake_upstream import FakeUpstream
from tests.outage import finished_request
from tests.requests_app.conftest import Tenant
from tests.requests_app.test_odd_upstream_answers import raw_answer

CHAT = [{"role": "user", "content": "fail over"}]


@pytest.fixture(scope="module")
def second_server():
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def third_server():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def secondary(tenant, second_server):
    second_server.reset()
    return add_upstream(
        project=tenant.project,
        base_url=second_server.base_url,
        provider_key="sk-second-provider-key",
        name="fallback-1",
        model_map={"gpt-4o-mini": "second-model"},
    )


def primary_of(tenant) -> Upstream:
    return tenant.project.upstreams.get(position=0)


def refused_url() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def set_policy(tenant, **fields) -> None:
    for field, value in fields.items():
        setattr(tenant.project, field, value)
    tenant.project.save()


def chain(public_id: str) -> list[tuple[str, str, int | None]]:
    """Each attempt's upstream, outcome and status code, once the request has finished: a
    streamed answer reaches its end at the client before the worker records the attempt."""
    request = finished_request(public_id, message=f"request {public_id} never finished")
    return [(a.upstream, a.outcome, a.status_code) for a in request.attempts.all()]


def attempt_upstreams(sdk, tenant, public_id: str) -> list[str]:
    """Each attempt's upstream, as the request object names them."""
    body = httpx.get(
        f"{sdk.base_url}requests/{public_id}",
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    ).json()
    return [attempt["upstream"] for attempt in body["attempts"]]


def create(sdk, model: str, **kwargs):
    raw = sdk.chat.completions.with_raw_response.create(model=model, messages=CHAT, **kwargs)
    return raw, raw.headers["reqrun-request-id"]


def test_a_refused_connection_fails_over_to_the_secondary(sdk, tenant, secondary, second_server):
    Upstream.objects.filter(pk=primary_of(tenant).pk).update(base_url=refused_url())

    raw, public_id = create(sdk, "refused")

    assert raw.parse().choices[0].message.content
    assert raw.headers["reqrun-upstream"] == "fallback-1"
    assert raw.headers["reqrun-attempts"] == "2"
    assert [(name, outcome) for name, outcome, _ in chain(public_id)] == [
        ("primary", "connection_error"),
        ("fallback-1", "success"),
    ]
    assert second_server.count("/v1/chat/completions") == 1
    assert attempt_upstreams(sdk, tenant, public_id) == ["primary", "fallback-1"]


def test_a_primary_without_a_provider_key_is_skipped_not_refused(
    sdk, tenant, secondary, fake_upstream, second_server
):
    # Moving the primary to another host clears its key: requests go on to the fallback
    # rather than every one being refused for a missing key.
    remove_upstream_key(upstream=primary_of(tenant))

    raw, public_id = create(sdk, "keyless-primary")

    assert raw.parse().choices[0].message.content
    assert chain(public_id) == [("fallback-1", "success", 200)]
    assert fake_upstream.count() == 0 and second_server.count("/v1/chat/completions") == 1


def test_models_come_from_the_first_upstream_with_a_provider_key(
    sdk, tenant, secondary, fake_upstream, second_server
):
    remove_upstream_key(upstream=primary_of(tenant))

    assert [model.id for model in sdk.models.list()]
    assert second_server.count("/v1/models") == 1 and fake_upstream.count() == 0


def test_a_503_fails_over_at_once_and_the_model_map_applies_only_on_the_secondary(
    sdk, secondary, fake_upstream, second_server
):
    fake_upstream.script("gpt-4o-mini", ["503ra5"])  # even a Retry-After does not hold it

    raw, public_id = create(sdk, "gpt-4o-mini")

    assert raw.headers["reqrun-upstream"] == "fallback-1"
    assert chain(public_id) == [("primary", "retryable_error", 503), ("fallback-1", "success", 200)]
    first, second = Request.objects.get(public_id=public_id).attempts.all()
    assert (second.started_at - first.finished_at).total_seconds() < 1  # no backoff
    assert [r.body["model"] for r in fake_upstream.requests] == ["gpt-4o-mini"]
    assert [r.body["model"] for r in second_server.requests] == ["second-model"]


def test_the_model_map_keeps_an_escaped_lone_surrogate_in_the_body(
    live_api, tenant, secondary, fake_upstream, second_server
):
    # Valid JSON that names no character UTF-8 can encode: mapping the model for the
    # secondary must send it on as the caller wrote it, not fail as ReqRun's own error.
    fake_upstream.script("gpt-4o-mini", ["503"])
    body = (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\\ud800 \xc3\xa9"}]}'
    )

    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Content-Type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    assert chain(response.headers["reqrun-request-id"])[-1] == ("fallback-1", "success", 200)
    (sent,) = second_server.requests
    assert sent.body["model"] == "second-model"
    assert sent.body["messages"][0]["content"] == "a\ud800 \u00e9"


def test_insufficient_quota_fails_over(sdk, secondary, fake_upstream):
    fake_upstream.script("quota", ["429q"])

    raw, public_id = create(sdk, "quota")

    assert raw.headers["reqrun-upstream"] == "fallback-1"
    assert chain(public_id) == [("primary", "fatal_error", 429), ("fallback-1", "success", 200)]


def test_the_callers_own_400_is_returned_without_failover(sdk, secondary, second_server):
    with pytest.raises(openai.BadRequestError) as raised:
        create(sdk, "script:400")

    assert raised.value.response.headers["reqrun-upstream"] == "primary"
    public_id = raised.value.response.headers["reqrun-request-id"]
    assert chain(public_id) == [("primary", "fatal_error", 400)]
    assert second_server.count() == 0


# Answers no client can read, each from a misconfigured primary (a base URL behind a
# captive proxy, a website's), for model "unreadable": (streamed?, status, error code).
UNREADABLE = {
    "a redirect": (False, 302, "upstream_redirected"),
    "a login page": (False, 200, "upstream_not_json"),
    "JSON to a stream": (True, 200, "invalid_event_stream"),
}


def answer_unreadably(fake_upstream, what: str) -> bool:
    """The primary answers `what` (UNREADABLE) to model "unreadable"; whether to stream."""
    if what == "a redirect":
        fake_upstream.script("unreadable", ["302"], headers={"location": "https://sso.example"})
    elif what == "a login page":
        page = raw_answer(b"200 OK", b"text/html", b"<h1>Log in</h1>")
        fake_upstream.answer_raw("unreadable", page)
    else:
        answer = raw_answer(b"200 OK", b"application/json", b'{"id": "c1", "choices": []}')
        fake_upstream.answer_raw("unreadable", answer)
    return UNREADABLE[what][0]


@pytest.mark.parametrize("what", UNREADABLE)
def test_an_unreadable_answer_moves_on_when_the_policy_names_it(
    sdk, tenant, secondary, fake_upstream, second_server, what
):
    # Even with two tries per upstream the primary is asked once: it would answer the same.
    set_policy(
        tenant, failover_on=["server_error", "unreadable_answer"], failover_tries_per_upstream=2
    )
    stream = answer_unreadably(fake_upstream, what)

    raw, public_id = create(sdk, "unreadable", stream=stream)

    answer = raw.parse()
    assert list(answer) if stream else answer.choices[0].message.content
    assert raw.headers["reqrun-upstream"] == "fallback-1"
    _, status, code = UNREADABLE[what]
    assert chain(public_id) == [("primary", "fatal_error", status), ("fallback-1", "success", 200)]
    assert Request.objects.get(public_id=public_id).attempts.first().error_code == code
    assert fake_upstream.count("/v1/chat/completions") == 1
    assert second_server.count("/v1/chat/completions") == 1
    assert attempt_upstreams(sdk, tenant, public_id) == ["primary", "fallback-1"]


@pytest.mark.parametrize("what", UNREADABLE)
def test_by_default_an_unreadable_answer_ends_the_request_on_the_primary(
    sdk, tenant, secondary, fake_upstream, second_server, what
):
    assert "unreadable_answer" not in tenant.project.failover_on  # off for a new project
    stream = answer_unreadably(fake_upstream, what)

    with pytest.raises(openai.APIStatusError) as raised:
        create(sdk, "unreadable", stream=stream)

    response = raised.value.response
    _, status, code = UNREADABLE[what]
    assert (response.status_code, response.json()["error"]["code"]) == (502, code)
    assert chain(response.headers["reqrun-request-id"]) == [("primary", "fatal_error", status)]
    assert fake_upstream.count("/v1/chat/completions") == 1
    assert second_server.count() == 0


def test_with_every_upstream_down_it_backs_off_between_rounds_then_gives_the_last_answer(
    sdk, tenant, secondary, third_server, fake_upstream, second_server
):
    third_server.reset()
    add_upstream(
        project=tenant.project,
        base_url=third_server.base_url,
        provider_key="sk-third-provider-key",
        name="fallback-2",
    )
    tenant.project.max_attempts = 5
    tenant.project.save()
    for server in (fake_upstream, second_server, third_server):
        server.script("down", ["503ra1"])

    with pytest.raises(openai.InternalServerError) as raised:
        create(sdk, "down")

    response = raised.value.response
    assert response.status_code == 503
    assert response.headers["reqrun-upstream"] == "fallback-1"  # the last answer, as given
    attempts = list(
        Request.objects.get(public_id=response.headers["reqrun-request-id"]).attempts.all()
    )
    assert [a.upstream for a in attempts] == [
        "primary",
        "fallback-1",
        "fallback-2",
        "primary",
        "fallback-1",
    ]
    gaps = [
        (later.started_at - earlier.finished_at).total_seconds()
        for earlier, later in zip(attempts, attempts[1:], strict=False)
    ]
    # Retry-After: 1 is honoured between rounds only, not when moving on to the next upstream.
    assert gaps[0] < 1 and gaps[1] < 1 and gaps[3] < 1
    assert gaps[2] >= 0.95


def test_a_policy_without_5xx_retries_the_same_upstream(sdk, tenant, secondary, fake_upstream):
    set_policy(tenant, failover_on=["connection_error", "timeout"])
    fake_upstream.script("stay", ["503", "200"])

    _, public_id = create(sdk, "stay")

    assert [name for name, _, _ in chain(public_id)] == ["primary", "primary"]


def test_two_tries_per_upstream_before_moving_on(sdk, tenant, secondary, fake_upstream):
    set_policy(tenant, failover_on=["server_error"], failover_tries_per_upstream=2)
    fake_upstream.script("twice", ["503"])

    _, public_id = create(sdk, "twice")

    assert [name for name, _, _ in chain(public_id)] == ["primary", "primary", "fallback-1"]


def test_a_final_answer_the_policy_names_moves_on_at_once_whatever_the_tries_per_upstream(
    sdk, tenant, secondary, fake_upstream
):
    # A second try on the primary would get the same `insufficient_quota`: it is not retried
    # there (it is final) and still moves on rather than ending the request.
    set_policy(tenant, failover_on=["rate_limited"], failover_tries_per_upstream=2)
    fake_upstream.script("quota-twice", ["429q"])

    raw, public_id = create(sdk, "quota-twice")

    assert raw.headers["reqrun-upstream"] == "fallback-1"
    assert chain(public_id) == [("primary", "fatal_error", 429), ("fallback-1", "success", 200)]


def test_not_returning_to_the_primary_starts_where_the_last_request_succeeded(
    sdk, tenant, secondary, fake_upstream
):
    set_policy(tenant, failover_on=["server_error"], failover_return_to_primary=False)
    fake_upstream.script("sticky", ["503", "200"])

    _, first = create(sdk, "sticky")
    raw, second = create(sdk, "sticky")

    assert [name for name, _, _ in chain(first)] == ["primary", "fallback-1"]
    assert [name for name, _, _ in chain(second)] == ["fallback-1"]
    assert raw.headers["reqrun-upstream"] == "fallback-1"


def test_a_stream_fails_over_before_its_first_byte(sdk, secondary, fake_upstream, second_server):
    fake_upstream.script("stream-before", ["503"])

    raw = sdk.chat.completions.with_raw_response.create(
        model="stream-before", messages=CHAT, stream=True
    )
    chunks = list(raw.parse())

    assert chunks and raw.headers["reqrun-upstream"] == "fallback-1"
    assert chain(raw.headers["reqrun-request-id"]) == [
        ("primary", "retryable_error", 503),
        ("fallback-1", "success", 200),
    ]


def test_a_stream_never_fails_over_after_its_first_byte(
    sdk, secondary, fake_upstream, second_server
):
    fake_upstream.script("stream-after", ["cut3"])

    raw = sdk.chat.completions.with_raw_response.create(
        model="stream-after", messages=CHAT, stream=True
    )
    with pytest.raises(openai.APIError):
        list(raw.parse())

    request = Request.objects.get(public_id=raw.headers["reqrun-request-id"])
    assert request.status == "failed" and request.partial
    assert [a.upstream for a in request.attempts.all()] == ["primary"]
    assert second_server.count() == 0


def breaker_events(tenant) -> list[str]:
    return list(
        AuditEvent.objects.filter(
            account=tenant.account, action__startswith="upstream_breaker_"
        ).values_list("action", flat=True)
    )[::-1]


def open_the_primarys_breaker(sdk, tenant, fake_upstream, model: str) -> None:
    """Five failures within the window (the default threshold), each failing over."""
    fake_upstream.script(model, ["503"])
    for _ in range(5):
        create(sdk, model)
    wait_until(
        lambda: Upstream.objects.get(pk=primary_of(tenant).pk).breaker_open_until,
        message="the primary's breaker did not open after five failures",
    )


def test_the_breaker_opens_skips_the_primary_and_a_probe_closes_it(
    sdk, tenant, secondary, fake_upstream, second_server
):
    open_the_primarys_breaker(sdk, tenant, fake_upstream, "breaker")
    assert fake_upstream.count() == 5

    raw, public_id = create(sdk, "breaker")

    assert fake_upstream.count() == 5  # no time spent on the primary
    assert chain(public_id) == [("fallback-1", "success", 200)]
    assert raw.headers["reqrun-attempts"] == "1"

    # The cooldown passes; the primary is still down: the probe fails, the breaker opens
    # again for twice as long, and the request itself fails over.
    now = timezone.now()
    Upstream.objects.filter(pk=primary_of(tenant).pk).update(
        breaker_opened_at=now - timedelta(seconds=31), breaker_open_until=now - timedelta(seconds=1)
    )
    _, public_id = create(sdk, "breaker")
    assert [name for name, _, _ in chain(public_id)] == ["primary", "fallback-1"]
    reopened = wait_until(
        lambda: Upstream.objects.filter(
            pk=primary_of(tenant).pk, breaker_open_until__gt=timezone.now() + timedelta(seconds=45)
        ).first(),
        message="a failed probe did not open the breaker for twice the cooldown",
    )
    assert reopened.breaker_probe_until is None

    # The primary recovers; after the cooldown one probe goes to it and closes the breaker.
    fake_upstream.script("breaker", ["200"])
    Upstream.objects.filter(pk=primary_of(tenant).pk).update(
        breaker_open_until=timezone.now() - timedelta(seconds=1)
    )
    _, public_id = create(sdk, "breaker")
    assert chain(public_id) == [("primary", "success", 200)]
    # The worker closes the breaker after the caller has its answer, and records the event
    # after the row: waiting for the event, the last of the two, sees both.
    wait_until(
        lambda: "upstream_breaker_closed" in breaker_events(tenant),
        message="the probe's success did not close the breaker",
    )
    closed = Upstream.objects.get(pk=primary_of(tenant).pk)
    assert (closed.breaker_open_until, closed.breaker_failures) == (None, 0)
    assert breaker_events(tenant) == [
        "upstream_breaker_open",
        "upstream_breaker_half_open",
        "upstream_breaker_open",
        "upstream_breaker_half_open",
        "upstream_breaker_closed",
    ]


def queued_request(tenant, model: str) -> Request:
    """A request accepted but never published, for this test process to run itself."""
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "x"}}]}}'
    return RequestFactory(
        project=tenant.project,
        model=model,
        request_body=encryption.encrypt(body.encode()),
        max_attempts=3,
    )


def open_the_primarys_breaker_here(tenant, fake_upstream, model: str) -> None:
    """Five failures within the window, run by this process: the breaker is open at once."""
    fake_upstream.script(model, ["503"])
    for _ in range(5):
        execute_request(queued_request(tenant, model).pk)
    assert Upstream.objects.get(pk=primary_of(tenant).pk).breaker_open_until is not None


def cooldown_over(tenant) -> None:
    Upstream.objects.filter(pk=primary_of(tenant).pk).update(
        breaker_open_until=timezone.now() - timedelta(seconds=1)
    )


def test_the_breaker_is_shared_by_the_worker_process_and_this_one(
    sdk, tenant, secondary, fake_upstream
):
    # Opened by the attempts of the worker process...
    open_the_primarys_breaker(sdk, tenant, fake_upstream, "shared")

    # ...and obeyed by this process, running a request of its own.
    request = queued_request(tenant, "shared")
    execute_request(request.pk)

    assert chain(request.public_id) == [("fallback-1", "success", 200)]
    assert fake_upstream.count() == 5


def test_the_breaker_opened_here_is_obeyed_by_the_worker_process(
    sdk, tenant, secondary, fake_upstream
):
    open_the_primarys_breaker_here(tenant, fake_upstream, "shared-back")

    _, public_id = create(sdk, "shared-back")

    assert chain(public_id) == [("fallback-1", "success", 200)]
    assert fake_upstream.count() == 5


def test_a_probe_answered_with_the_callers_own_400_lets_the_next_request_probe(
    tenant, secondary, fake_upstream
):
    # A 400 says nothing about the upstream's health: the breaker stays half-open, but the
    # probe is handed back rather than held for a whole lease, skipping the upstream.
    open_the_primarys_breaker_here(tenant, fake_upstream, "probe-400")
    cooldown_over(tenant)

    probe = queued_request(tenant, "script:400")
    execute_request(probe.pk)
    assert chain(probe.public_id) == [("primary", "fatal_error", 400)]
    assert Upstream.objects.get(pk=primary_of(tenant).pk).breaker_probe_until is None

    following = queued_request(tenant, "recovered")
    execute_request(following.pk)

    assert chain(following.public_id) == [("primary", "success", 200)]
    assert Upstream.objects.get(pk=primary_of(tenant).pk).breaker_open_until is None


def test_a_worker_killed_mid_chain_is_finished_on_the_next_upstream_by_the_sweeper(
    tenant, live_api, worker, secondary, fake_upstream, second_server
):
    tenant.project.attempt_timeout_seconds = 3  # lease: 3 s + 1 s grace in the test worker
    tenant.project.save()
    fake_upstream.script("killed", ["hang"])
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "killed", "messages": CHAT},
        headers={
            "Authorization": f"Bearer {tenant.raw_key}",
            "Prefer": "respond-async",
            "Idempotency-Key": "killed-mid-chain",
        },
    )
    public_id = response.json()["id"]
    wait_until(lambda: fake_upstream.count() == 1, message="the attempt never reached the primary")

    worker.kill()
    worker.start()

    def finished():
        sweep()
        request = Request.objects.get(public_id=public_id)
        return request if request.is_terminal else None

    request = wait_until(finished, timeout=60, message="the request never finished")
    assert request.status == "succeeded"
    assert chain(public_id) == [
        ("primary", "connection_error", None),
        ("fallback-1", "success", 200),
    ]
    assert request.attempts.first().error_code == "worker_lost"
    # Each upstream ran it once; the key still names this one request.
    assert fake_upstream.count() == 1 and second_server.count() == 1
    replay = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "killed", "messages": CHAT},
        headers={
            "Authorization": f"Bearer {tenant.raw_key}",
            "Idempotency-Key": "killed-mid-chain",
        },
    )
    assert replay.headers["reqrun-request-id"] == public_id
    assert replay.headers["reqrun-upstream"] == "fallback-1"
    assert Request.objects.filter(project=tenant.project).count() == 1


def test_a_breaker_changes_state_only_together_with_its_audit_event(transactional_db):
    """The state and its event are one transaction: when the event cannot be written (here
    a constraint refuses it; a worker lost between two writes is the same gap), the
    breaker stays as it was instead of changing without a trace in the security log."""
    tenant = Tenant(email="breaker@example.com", upstream_url="http://127.0.0.1:9/v1")
    primary = primary_of(tenant)
    now = timezone.now()
    Upstream.objects.filter(pk=primary.pk).update(breaker_open_until=now, breaker_failures=5)
    primary.refresh_from_db()
    primary.project = tenant.project
    success = AttemptResult(Attempt.Outcome.SUCCESS, status_code=200)
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE accounts_auditevent ADD CONSTRAINT no_breaker_events "
            "CHECK (action NOT LIKE 'upstream_breaker_%%') NOT VALID"
        )
    try:
        with pytest.raises(IntegrityError):
            breaker.record(primary, success, now=now, probe=True, account=tenant.account)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE accounts_auditevent DROP CONSTRAINT no_breaker_events")

    assert Upstream.objects.get(pk=primary.pk).breaker_open_until == now  # still open

    breaker.record(primary, success, now=now, probe=True, account=tenant.account)

    assert Upstream.objects.get(pk=primary.pk).breaker_open_until is None
    events = AuditEvent.objects.filter(account=tenant.account, action="upstream_breaker_closed")
    assert events.count() == 1


def test_a_primary_whose_provider_key_cannot_be_read_fails_over(
    tenant, secondary, fake_upstream, second_server
):
    # Its key was stored under an encryption key that has left the ring: nothing was sent,
    # and the fallback's own key still opens.
    Upstream.objects.filter(pk=primary_of(tenant).pk).update(
        provider_key_encrypted=Fernet(Fernet.generate_key()).encrypt(b"sk-primary")
    )
    request = queued_request(tenant, "sealed-primary")

    execute_request(request.pk)

    assert chain(request.public_id) == [
        ("primary", "fatal_error", None),
        ("fallback-1", "success", 200),
    ]
    request.refresh_from_db()
    assert (request.status, request.error) == ("succeeded", None)
    assert fake_upstream.count() == 0 and second_server.count("/v1/chat/completions") == 1


def test_a_request_body_that_cannot_be_read_fails_without_trying_the_fallback(
    tenant, secondary, fake_upstream, second_server
):
    # Unlike a provider key, the request's own body is the same whichever upstream it goes to.
    request = queued_request(tenant, "sealed-body")
    Request.objects.filter(pk=request.pk).update(
        request_body=Fernet(Fernet.generate_key()).encrypt(b'{"model": "sealed-body"}')
    )

    execute_request(request.pk)

    assert chain(request.public_id) == [("primary", "fatal_error", None)]
    request.refresh_from_db()
    assert (request.status, request.error["code"]) == ("failed", "encryption_key_missing")
    assert fake_upstream.count() == 0 and second_server.count() == 0


@pytest.mark.parametrize("refused", ["fallback-1", "primary"])
def test_the_answer_and_the_recorded_error_are_the_last_attempts(
    live_api, tenant, secondary, fake_upstream, second_server, refused
):
    # One upstream answers 503, the other refuses the connection: whichever comes last, the
    # caller's answer and the request's record tell its story, not one each.
    set_policy(tenant, max_attempts=2)
    Upstream.objects.filter(project=tenant.project, name=refused).update(base_url=refused_url())
    for server in (fake_upstream, second_server):
        server.script("one-each", ["503"])

    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "one-each", "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )

    request = finished_request(response.headers["reqrun-request-id"], message="never finished")
    assert [a.upstream for a in request.attempts.all()] == ["primary", "fallback-1"]
    if refused == "fallback-1":  # the last attempt had no answer
        assert response.status_code == 502, response.text
        assert response.json()["error"] == request.error
        assert request.error["code"] == "connecterror"
        assert (request.response_status_code, request.response_body) == (None, None)
    else:  # the last attempt's 503, as the fallback gave it
        assert response.status_code == 503, response.text
        assert response.headers["reqrun-upstream"] == "fallback-1"
        assert request.error is None and request.response_status_code == 503


def test_a_streamed_probe_keeps_its_hold_while_it_streams(
    tenant, live_api, worker, secondary, fake_upstream, second_server
):
    # The probe is held for one lease (1 s + the test worker's 1 s grace); the stream lasts
    # longer than that (3.6 s: six pauses of 0.6 s, each within the 1 s attempt timeout),
    # and no second attempt may probe the primary meanwhile.
    open_the_primarys_breaker_here(tenant, fake_upstream, "long-probe")
    set_policy(tenant, attempt_timeout_seconds=1)
    cooldown_over(tenant)
    fake_upstream.script("long-probe", ["slowchunks600"])
    done = threading.Event()

    def read_the_stream():
        with httpx.stream(
            "POST",
            f"{live_api.url}/v1/chat/completions",
            json={
                "model": "long-probe",
                "messages": CHAT,
                "stream": True,
                "stream_options": {"include_usage": True},  # one more event, one more pause
            },
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
            timeout=30,
        ) as response:
            response.read()
        done.set()

    reader = threading.Thread(target=read_the_stream, daemon=True)
    reader.start()
    primary = primary_of(tenant)
    first_hold = wait_until(
        lambda: Upstream.objects.get(pk=primary.pk).breaker_probe_until,
        message="the stream never took the probe",
    )
    # Past the first hold, yet well before the stream's end (the hold seen first may already
    # be a renewed one, 0.7 s later, on a loaded machine).
    wait_until(lambda: timezone.now() > first_hold + timedelta(seconds=0.2), timeout=10)

    assert not done.is_set(), "the stream ended before its first hold did"
    held = Upstream.objects.get(pk=primary.pk).breaker_probe_until
    assert held is not None and held > timezone.now()
    reader.join(30)
    assert done.is_set()
    wait_until(lambda: Upstream.objects.get(pk=primary.pk).breaker_open_until is None)
