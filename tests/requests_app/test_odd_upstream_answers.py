"""Answers real providers, proxies in front of them and misconfigured base URLs give: each
ends its attempt with a recorded error the caller and the dashboard can act on, retried only
when a retry can help, never a 500 of ReqRun's and never a request left running."""

import time
from datetime import UTC, datetime, timedelta
from email.utils import formatdate

import httpx
import pytest

from requests_app.engine import upstream
from requests_app.engine.outcomes import AttemptResult
from requests_app.models import Request
from tests.conftest import wait_until
from tests.fake_upstream import WHEN_ASKED_AGAIN

CHAT = [{"role": "user", "content": "x"}]
SENTINEL = b"SENTINEL-BODY-TEXT"


def post(live_api, tenant, model: str, *, stream: bool = False):
    """One call through ReqRun; its answer, and the request once it has finished."""
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": model, "stream": stream, "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )
    request = wait_until(lambda: Request.objects.filter(finished_at__isnull=False).first())
    return response, request


def attempts(request: Request) -> list[tuple[str, int | None, str | None]]:
    return [(a.outcome, a.status_code, a.error_code) for a in request.attempts.all()]


def raw_answer(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
    )  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("status", "location", "shown"),
    [
        ("301", "https://api.example.com/v1/chat/completions?sig=secret", "https://api.example.com/v1/chat/completions"),
        ("308", "https://user:pw@api.example.com/chat/completions", "https://api.example.com/chat/completions"),
        ("302", "/login?next=%2Fv1", "/login"),
        ("302", None, None),
    ],
    ids=["http to https", "credentials in it", "relative", "no location"],
)  # fmt: skip
def test_a_redirect_fails_at_once_saying_where_and_to_check_the_base_url(
    live_api, tenant, fake_upstream, status, location, shown, stream
):
    headers = {"location": location} if location else {}
    fake_upstream.script("moved", [status], headers=headers)

    response, request = post(live_api, tenant, "moved", stream=stream)

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_redirected")
    assert f"({status})" in error["message"] and "base URL" in error["message"]
    if shown:
        assert shown in error["message"]
    else:
        assert "without saying where" in error["message"]
    assert "secret" not in error["message"] and "pw" not in error["message"]
    assert request.status == "failed" and request.error == error
    assert attempts(request) == [("fatal_error", int(status), "upstream_redirected")]
    assert fake_upstream.count("/v1/chat/completions") == 1  # neither followed nor retried


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (b"304 Not Modified", "304 Not Modified"),
        (b"305 Use Proxy", "HTTP status 305"),
        (b"399 Odd", "HTTP status 399"),
    ],
    ids=["not modified", "a retired 3xx", "an unassigned 3xx"],
)
def test_a_3xx_that_is_not_a_redirect_fails_at_once_without_being_called_one(
    live_api, tenant, fake_upstream, status, said
):
    """A 304 answers a conditional request, which ReqRun never makes; a 305 or an unknown
    3xx sends nobody anywhere. Neither carries an answer a client could read, and neither is
    recorded as a redirect."""
    fake_upstream.answer_raw("odd", raw_answer(status, b"application/json", b""))

    response, request = post(live_api, tenant, "odd")

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_unexpected_status")
    assert said in error["message"] and "base URL" in error["message"]
    assert "redirect" not in error["message"].replace("not a redirect", "")
    assert request.status == "failed" and request.error == error
    assert attempts(request) == [("fatal_error", int(status[:3]), "upstream_unexpected_status")]
    assert fake_upstream.count("/v1/chat/completions") == 1


@pytest.mark.parametrize(
    ("content_type", "body", "said"),
    [
        (b"text/html; charset=utf-8", b"<!doctype html><h1>Log in</h1>" + SENTINEL, "text/html"),
        (b"application/json", b"", "an empty body"),
        (b"text/event-stream", b"data: " + SENTINEL + b"\n\ndata: [DONE]\n\n", "event stream"),
    ],
    ids=["a login page", "empty", "an event stream"],
)  # fmt: skip
def test_a_success_that_is_not_json_fails_at_once_not_as_a_success(
    live_api, tenant, fake_upstream, worker, content_type, body, said
):
    log_start = worker.log_path.stat().st_size
    fake_upstream.answer_raw("raw", raw_answer(b"200 OK", content_type, body))

    response, request = post(live_api, tenant, "raw")

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_not_json")
    assert said in error["message"] and "base URL" in error["message"]
    assert (request.status, request.response_body, request.usage) == ("failed", None, None)
    assert attempts(request) == [("fatal_error", 200, "upstream_not_json")]
    assert fake_upstream.count("/v1/chat/completions") == 1
    with open(worker.log_path, "rb") as log:
        log.seek(log_start)
        assert SENTINEL not in log.read()


def test_json_leading_whitespace_still_counts_as_json(live_api, tenant, fake_upstream):
    # Some providers send whitespace while they work, before the JSON of a plain call.
    body = b'\n \n{"id":"c1","object":"chat.completion","choices":[],"usage":{"total_tokens":3}}'
    fake_upstream.answer_raw("raw", raw_answer(b"200 OK", b"application/json", body))

    response, request = post(live_api, tenant, "raw")

    assert response.status_code == 200
    assert (request.status, request.usage["total_tokens"]) == ("succeeded", 3)


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens": -5, "completion_tokens": 2, "total_tokens": -3}',
        b'{"prompt_tokens": 10000000000000000, "total_tokens": 10000000000000002}',
    ],
    ids=["negative", "past what the usage page sums"],
)
def test_negative_or_enormous_token_counts_leave_the_usage_unknown(
    live_api, tenant, fake_upstream, usage
):
    body = b'{"id":"c1","object":"chat.completion","choices":[],"usage":' + usage + b"}"
    fake_upstream.answer_raw("raw", raw_answer(b"200 OK", b"application/json", body))

    response, request = post(live_api, tenant, "raw")

    assert (response.status_code, response.content) == (200, body)  # relayed unchanged
    assert (request.status, request.usage) == ("succeeded", None)


def test_json_answered_to_a_stream_is_an_invalid_event_stream(live_api, tenant, fake_upstream):
    body = b'{"id":"c1","object":"chat.completion","choices":[]}'
    fake_upstream.answer_raw("raw", raw_answer(b"200 OK", b"application/json", body))

    response, request = post(live_api, tenant, "raw", stream=True)

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "invalid_event_stream"
    assert attempts(request) == [("fatal_error", 200, "invalid_event_stream")]


# An answer whose end is the connection's close (no Content-Length, not chunked), as HTTP/1.0
# servers and some proxies send it.
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
COMPLETION = b'{"id":"c1","object":"chat.completion","choices":[],"usage":{"total_tokens":3}}'
# A Content-Length that stops partway through the body sent after it.
SHORT_LENGTH = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n"
SHORT_LENGTH_THEN_CLOSE = SHORT_LENGTH.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")


@pytest.mark.parametrize(
    ("answer", "recorded"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\n", (None, "remoteprotocolerror")),
        (raw_answer(b"200 OK", b"application/json", b'{"id":')[:-3], (None, "remoteprotocolerror")),
        (CLOSE_DELIMITED + b'{"id":"c1","choices":[', (200, "response_incomplete")),
        (SHORT_LENGTH + COMPLETION, (None, "response_incomplete")),
        (SHORT_LENGTH_THEN_CLOSE + COMPLETION, (None, "response_incomplete")),
    ],
    ids=[
        "1xx only",
        "cut mid-body",
        "cut where only the close ends it",
        "a Content-Length shorter than the body",
        "the same, closing the connection",
    ],
)  # fmt: skip
def test_an_answer_that_never_completes_is_retried(
    live_api, tenant, fake_upstream, answer, recorded
):
    tenant.project.max_attempts = 2
    tenant.project.save()
    fake_upstream.answer_raw("raw", answer)

    response, request = post(live_api, tenant, "raw")

    status_code, code = recorded
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == code
    assert request.status == "failed"
    assert attempts(request) == [("connection_error", status_code, code)] * 2


def test_the_client_still_sees_bytes_past_an_answers_content_length(fake_upstream):
    """`went_past_its_end` reaches h11's buffer through httpcore 1.x's internals (httpx has
    no public way to it) and finds nothing if they move: an overrun sent in the same TCP
    segment would then go unseen and its connection, the extra bytes in its buffer, back to
    the pool. An httpcore that keeps them elsewhere fails here, not silently in production
    (pyproject bounds httpcore to the major version checked)."""
    fake_upstream.answer_raw("raw", SHORT_LENGTH + COMPLETION)

    result = upstream.call(
        method="POST",
        url=upstream.endpoint_url(fake_upstream.base_url, "/v1/chat/completions"),
        provider_key="sk-test",
        body=b'{"model": "raw"}',
        timeout=10,
    )

    assert (result.error_code, result.message) == (
        "response_incomplete",
        upstream.PAST_ITS_CONTENT_LENGTH,
    )


@pytest.mark.parametrize(
    "pieces",
    [
        (SHORT_LENGTH + COMPLETION[:30], COMPLETION[30:]),
        (SHORT_LENGTH + COMPLETION[:30], WHEN_ASKED_AGAIN, COMPLETION[30:]),
        (raw_answer(b"200 OK", b"application/json", COMPLETION[:30]),),
    ],
    ids=["its rest in a later TCP segment", "its rest sent when asked again", "framed whole"],
)
def test_a_success_whose_json_stops_where_its_framing_ends_is_retried_as_cut_off(
    live_api, tenant, fake_upstream, pieces
):
    """A Content-Length shorter than the body, whose rest the upstream sends after a pause,
    leaves nothing past the length for the client to see when it reads the answer: only the
    JSON, unfinished where the framing ends, shows the answer was cut. It is never passed on
    as a success."""
    tenant.project.max_attempts = 2
    tenant.project.save()
    fake_upstream.answer_raw("raw", *pieces)

    response, request = post(live_api, tenant, "raw")

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "response_incomplete")
    assert "cut off" in error["message"]
    assert (request.status, request.response_body, request.usage) == ("failed", None, None)
    assert attempts(request) == [("connection_error", 200, "response_incomplete")] * 2


def test_the_next_call_never_reads_the_rest_of_a_cut_answer(fake_upstream):
    """A success cut where its Content-Length ended, whose rest is still on its way, leaves a
    connection that looks idle. A retry sent on it (full jitter may wait ~0 s) would read that
    rest as the start of its own answer: the connection is never used again (the same
    httpcore internals as above)."""
    fake_upstream.answer_raw(
        "raw", SHORT_LENGTH + COMPLETION[:30], WHEN_ASKED_AGAIN, COMPLETION[30:]
    )

    def call(model: bytes) -> AttemptResult:
        return upstream.call(
            method="POST",
            url=upstream.endpoint_url(fake_upstream.base_url, "/v1/chat/completions"),
            provider_key="sk-test",
            body=b'{"model": "%s", "messages": []}' % model,
            timeout=10,
        )

    assert call(b"raw").error_code == "response_incomplete"
    assert call(b"gpt-test").outcome == "success"


def test_a_whole_answer_ended_by_the_close_succeeds(live_api, tenant, fake_upstream):
    body = b'{"id":"c1","object":"chat.completion","choices":[],"usage":{"total_tokens":3}}'
    fake_upstream.answer_raw("raw", CLOSE_DELIMITED + body)

    response, request = post(live_api, tenant, "raw")

    assert (response.status_code, response.content) == (200, body)
    assert (request.status, request.usage["total_tokens"]) == ("succeeded", 3)


def test_a_retry_after_given_as_an_http_date_is_honoured(live_api, tenant, fake_upstream):
    # Within the 2 s a worker waits itself (a longer wait is the sweeper's to dispatch). A
    # date names a whole second, here 1 to 2 s ahead; what is left of it when the worker
    # reads it depends on how long the call took to get there, so the wait is checked
    # against the date, not against a fixed length.
    at = int(time.time()) + 2
    date = datetime.fromtimestamp(at, UTC)
    fake_upstream.script(
        "busy", ["503", "200"], headers={"retry-after": formatdate(at, usegmt=True)}
    )

    response, request = post(live_api, tenant, "busy")

    assert response.status_code == 200
    first, second = request.attempts.all()
    assert (first.outcome, first.status_code) == ("retryable_error", 503)

    def left_at(moment: datetime) -> int:
        """The wait until the date from `moment`, in milliseconds as an attempt records it."""
        return int(max(0.0, (date - moment).total_seconds()) * 1000)

    # Read during the first attempt: what was left until the date then.
    assert left_at(first.finished_at) <= first.retry_after_ms <= left_at(first.started_at)
    assert second.started_at >= first.finished_at + timedelta(milliseconds=first.retry_after_ms)


@pytest.mark.parametrize(
    ("retry_after", "stored"), [("86400", 120_000), ("-30", 0)], ids=["a day", "negative"]
)
def test_a_huge_or_negative_retry_after_is_held_within_bounds(
    live_api, tenant, fake_upstream, retry_after, stored
):
    fake_upstream.script("busy", ["429", "200"], headers={"retry-after": retry_after})

    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "busy", "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202

    def first_attempt_done():
        request = Request.objects.filter(attempts__finished_at__isnull=False).first()
        return request and request.attempts.first()

    first = wait_until(first_attempt_done)
    assert (first.outcome, first.retry_after_ms) == ("retryable_error", stored)
    request = Request.objects.get()
    if stored:  # scheduled at the cap, not a day later
        assert request.status == "retrying"
        wait = (request.next_attempt_at - first.finished_at).total_seconds()
        assert 119 <= wait <= 121
    else:
        wait_until(lambda: Request.objects.filter(status="succeeded").exists())


@pytest.mark.parametrize(
    ("answer", "code", "said"),
    [
        (
            raw_answer(b"301 Moved\r\nlocation: https://api.example.com/v1/models", b"a/b", b""),
            "upstream_redirected",
            "https://api.example.com/v1/models",
        ),
        (raw_answer(b"200 OK", b"text/html", b"<h1>Log in</h1>"), "upstream_not_json", "text/html"),
        (CLOSE_DELIMITED + b'{"object":"list","data":[', "response_incomplete", "cut off"),
        (
            raw_answer(b"200 OK\r\ncontent-encoding: gzip", b"application/json", b"{}"),
            "invalid_content_encoding",
            "Content-Encoding",
        ),
    ],
    ids=["a redirect", "a login page", "cut where only the close ends it", "not the gzip it says"],
)  # fmt: skip
def test_models_say_what_the_upstream_answered_rather_than_pass_it_on(
    live_api, tenant, fake_upstream, answer, code, said
):
    fake_upstream.answer_raw("/v1/models", answer)

    response = httpx.get(
        f"{live_api.url}/v1/models",
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", code)
    assert said in error["message"]


STREAMED = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[]}\n\ndata: [DONE]\n\n'


def answer_with_headers(content_type: bytes, body: bytes, *headers: bytes) -> bytes:
    lines = [b"HTTP/1.1 200 OK", b"content-type: " + content_type, *headers]
    lines += [b"content-length: %d" % len(body), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def relayed(response: httpx.Response) -> dict[bytes, list[bytes]]:
    """The answer's headers as the bytes the caller received, each name's values in order."""
    headers: dict[bytes, list[bytes]] = {}
    for name, value in response.headers.raw:
        headers.setdefault(name.lower(), []).append(value)
    return headers


# Values the upstream sent (as bytes) that no client reads alike: httpx guesses one
# encoding for all of an answer's headers, and Django writes a value out again as latin-1,
# MIME-encoding what latin-1 cannot hold.
NOT_ASCII = {
    "UTF-8": (b"x-request-id: req-\xc3\xa9", b"x-ratelimit-limit-tokens: \xe2\x82\xac5"),
    "latin-1": (b"x-request-id: req-\xe9", b"x-ratelimit-limit-tokens: 9\xe9"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("encoding", NOT_ASCII)
def test_header_values_that_are_not_ascii_are_dropped_never_mangled(
    live_api, tenant, fake_upstream, stream, encoding
):
    content_type, body = (
        (b"text/event-stream", STREAMED) if stream else (b"application/json", COMPLETION)
    )
    headers = (*NOT_ASCII[encoding], b"openai-processing-ms: 12")
    fake_upstream.answer_raw("raw", answer_with_headers(content_type, body, *headers))

    response, request = post(live_api, tenant, "raw", stream=stream)

    assert (response.status_code, response.content) == (200, body)
    headers = relayed(response)
    assert headers[b"openai-processing-ms"] == [b"12"]
    assert headers[b"content-type"] == [content_type]
    assert b"x-request-id" not in headers and b"x-ratelimit-limit-tokens" not in headers
    assert request.status == "succeeded"
    assert request.response_headers == {
        "content-type": content_type.decode(),
        "openai-processing-ms": "12",
        "ReqRun-Upstream": "primary",
    }


@pytest.mark.parametrize(
    ("repeated", "kept"),
    [
        ((b"content-type: application/json",), [b"application/json"]),
        ((b"content-type: text/html",), [b"application/json"]),
    ],
    ids=["the same twice", "two that differ"],
)
def test_a_content_type_sent_twice_is_relayed_once(live_api, tenant, fake_upstream, repeated, kept):
    # Two that differ cannot be relayed as one faithfully: ReqRun's own application/json
    # stands for them (the body was read as JSON), never "application/json, text/html".
    fake_upstream.answer_raw("raw", answer_with_headers(b"application/json", COMPLETION, *repeated))

    response, request = post(live_api, tenant, "raw")

    assert (response.status_code, response.content) == (200, COMPLETION)
    assert relayed(response)[b"content-type"] == kept
    assert request.status == "succeeded"
