"""Streams as upstreams really send them: where the first line's bytes split, how the
stream ends, what its events hold. The fake upstream's raw answers give the exact bytes."""

import gzip

import httpx
import openai
import pytest

from requests_app.engine import retention, sse
from requests_app.models import Request
from tests.conftest import WorkerProcess, wait_until
from tests.fake_upstream import WHEN_ASKED_AGAIN

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
)
USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n'
)
DONE = b"data: [DONE]\n\n"
# One event's data over two `data:` lines: SSE joins them with a line break.
USAGE_IN_TWO_LINES = USAGE.replace(b'"choices":[],', b'"choices":[],\ndata: ')
INCOMPLETE = (  # how a Responses stream ends when it reached max_output_tokens
    b"event: response.incomplete\n"
    b'data: {"type":"response.incomplete","response":{"id":"resp_1","status":"incomplete",'
    b'"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}}\n\n'
)


def stream(live_api, tenant, fake_upstream, *pieces, endpoint="/v1/chat/completions"):
    """The upstream answers exactly `pieces`; the caller's answer and the finished record."""
    fake_upstream.answer_raw("raw", *pieces)
    response = httpx.post(
        f"{live_api.url}{endpoint}",
        json={"model": "raw", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )
    request = wait_until(lambda: Request.objects.filter(finished_at__isnull=False).first())
    return response, request


@pytest.mark.parametrize(
    ("endpoint", "pieces"),
    [
        ("/v1/chat/completions", (HEAD + b"d", b"ata" + CHUNK[4:] + USAGE + DONE)),
        ("/v1/chat/completions", (HEAD + b"\xef\xbb\xbf" + CHUNK + USAGE + DONE,)),
        ("/v1/chat/completions", (HEAD + CHUNK + USAGE + b"data:[DONE]\n\n",)),
        ("/v1/chat/completions", (HEAD + (CHUNK + USAGE + DONE).replace(b"\n", b"\r"),)),
        ("/v1/chat/completions", (HEAD + (CHUNK + USAGE + DONE).replace(b"\n", b"\r\n"),)),
        (
            "/v1/chat/completions",
            (
                HEAD
                + CHUNK
                + b'data: {"type":"response.completed","response":"x"}\n\n'
                + USAGE
                + DONE,
            ),
        ),
        ("/v1/responses", (HEAD + INCOMPLETE,)),
        ("/v1/chat/completions", (HEAD + CHUNK + USAGE_IN_TWO_LINES + DONE,)),
    ],
    ids=[
        "first line in two pieces",
        "byte order mark",
        "no space after data:",
        "CR line endings",
        "CRLF line endings",
        "an event whose response is a string",
        "a Responses stream ending incomplete",
        "the usage event in two data lines",
    ],
)
def test_a_whole_stream_is_relayed_and_recorded_as_succeeded(
    live_api, tenant, fake_upstream, endpoint, pieces
):
    response, request = stream(live_api, tenant, fake_upstream, *pieces, endpoint=endpoint)

    assert response.status_code == 200
    assert response.content == b"".join(pieces).removeprefix(HEAD)  # byte for byte, no error
    assert (request.status, request.partial, request.error) == ("succeeded", False, None)
    assert request.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_a_cut_stream_whose_text_mentions_the_end_marker_is_still_cut(
    live_api, tenant, fake_upstream
):
    mention = (
        b'data: {"id":"c1","object":"chat.completion.chunk",'
        b'"choices":[{"index":0,"delta":{"content":"it ends with data: [DONE] and"}}]}\n\n'
    )
    response, request = stream(live_api, tenant, fake_upstream, HEAD + mention)  # then closed

    assert b"event: error" in response.content
    assert (request.status, request.partial) == ("failed", True)


CHAT_ERROR = (  # how a chat stream reports a failure partway (the SDKs raise on it)
    b'data: {"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":null}}\n\n'
)
RESPONSES_ERROR = (
    b"event: error\n"
    b'data: {"type":"error","code":"server_error","message":"The server had an error.",'
    b'"param":null}\n\n'
)
RESPONSES_FAILED = (
    b"event: response.failed\n"
    b'data: {"type":"response.failed","response":{"id":"resp_1","status":"failed",'
    b'"error":{"code":"server_error","message":"The server had an error."}}}\n\n'
)


@pytest.mark.parametrize(
    ("endpoint", "pieces"),
    [
        ("/v1/chat/completions", (HEAD + CHUNK + CHAT_ERROR + DONE,)),
        ("/v1/chat/completions", (HEAD + CHAT_ERROR + DONE,)),
        ("/v1/responses", (HEAD + RESPONSES_ERROR + RESPONSES_FAILED,)),
        (
            "/v1/chat/completions",
            (HEAD + CHUNK + CHAT_ERROR.replace(b'"type"', b'\ndata: "type"') + DONE,),
        ),
    ],
    ids=[
        "after a chunk, then [DONE]",
        "as the only event",
        "a Responses stream that failed",
        "in two data lines",
    ],
)
def test_an_error_the_upstream_sends_inside_its_stream_is_recorded_as_a_failure(
    live_api, tenant, fake_upstream, endpoint, pieces
):
    response, request = stream(live_api, tenant, fake_upstream, *pieces, endpoint=endpoint)

    assert response.status_code == 200
    assert response.content.startswith(b"".join(pieces).removeprefix(HEAD))  # all relayed
    assert (request.status, request.partial) == ("failed", True)
    assert request.error["code"] == "upstream_stream_error"
    assert request.attempts.get().outcome == "fatal_error"


@pytest.mark.parametrize(
    ("endpoint", "delivered", "replayed"),
    [
        ("/v1/chat/completions", CHUNK + USAGE + DONE, CHUNK + USAGE),
        (
            "/v1/chat/completions",
            (CHUNK + DONE).replace(b"\n", b"\r\n"),
            CHUNK.replace(b"\n", b"\r\n"),
        ),
        ("/v1/chat/completions", CHUNK + CHAT_ERROR + DONE, CHUNK + CHAT_ERROR),
        ("/v1/chat/completions", CHUNK, CHUNK),
        ("/v1/responses", RESPONSES_ERROR + RESPONSES_FAILED, RESPONSES_ERROR),
        ("/v1/responses", INCOMPLETE + DONE, b""),
    ],
    ids=[
        "[DONE]",
        "CRLF line endings",
        "an error inside, then [DONE]",
        "cut: no end",
        "a Responses stream that failed",
        "a Responses stream's last event and a [DONE]",
    ],
)
def test_a_failed_streams_replay_leaves_out_its_end_for_the_error_event(
    endpoint, delivered, replayed
):
    # An SSE client stops reading at the end ([DONE], a Responses stream's last event), so
    # the replay's error event takes its place rather than follow it unread.
    assert sse.before_end(endpoint, delivered) == replayed


def test_a_stream_cut_inside_an_event_ends_with_an_error_event_of_its_own(
    live_api, tenant, fake_upstream
):
    # The upstream's connection breaks halfway through its second event: the half event
    # never reaches the caller, so the error event cannot run into it.
    cut = HEAD + CHUNK + CHUNK[:40]
    response, request = stream(live_api, tenant, fake_upstream, cut)

    assert response.content.startswith(CHUNK + b"event: error\ndata: {")
    assert (request.status, request.partial) == ("failed", True)
    assert retention.stored_response_body(request) == CHUNK  # what the caller got
    fake_upstream.answer_raw("raw-sdk", cut)
    received = []
    with pytest.raises(openai.APIError) as raised:  # not a JSON error of a spliced event
        for chunk in tenant.client(live_api.url, timeout=30).chat.completions.create(
            model="raw-sdk", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            received.append(chunk)
    assert len(received) == 1
    assert "answer is incomplete" in raised.value.message


def test_a_stream_that_closes_inside_its_first_event_relays_nothing(
    live_api, tenant, fake_upstream
):
    tenant.project.max_attempts = 1
    tenant.project.save()
    response, request = stream(live_api, tenant, fake_upstream, HEAD + CHUNK[:40])

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "stream_incomplete"
    assert (request.status, request.partial, request.first_byte_at) == ("failed", False, None)


def test_a_stream_ended_inside_its_first_event_by_its_length_is_retried_on_a_new_connection(
    live_api, tenant, fake_upstream
):
    """Its Content-Length ends it inside its first event and the rest comes later: the
    retry must not be sent on that connection, where it would read the rest as its answer."""
    tenant.project.max_attempts = 2
    tenant.project.save()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 40\r\n\r\n"

    response, request = stream(
        live_api, tenant, fake_upstream, head + CHUNK[:40], WHEN_ASKED_AGAIN, CHUNK[40:] + DONE
    )

    assert response.json()["error"]["code"] == "stream_incomplete"
    codes = [attempt.error_code for attempt in request.attempts.all()]
    assert codes == ["stream_incomplete"] * 2


@pytest.mark.timeout(120)
def test_a_stream_past_the_size_cap_ends_with_what_was_relayed_or_nothing(
    live_api, tenant, fake_upstream, worker
):
    big = b'data: {"id":"c1","choices":[{"delta":{"content":"' + b"x" * 300 + b'"}}]}\n\n'
    worker.stop()
    capped = WorkerProcess(extra_env={"REQRUN_MAX_RESPONSE_BYTES": "300"}).start()
    try:
        later, later_request = stream(live_api, tenant, fake_upstream, HEAD + CHUNK, big)
        fake_upstream.answer_raw("raw-first", HEAD + big)
        first = httpx.post(
            f"{live_api.url}/v1/chat/completions",
            json={
                "model": "raw-first",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
            timeout=30,
        )
    finally:
        capped.stop()
        worker.start()

    assert later.content.startswith(CHUNK + b"event: error\n")  # what fitted, then the error
    assert (later_request.status, later_request.partial) == ("failed", True)
    assert later_request.error["code"] == "upstream_response_too_large"
    assert first.status_code == 502, first.text  # nothing fitted: an answer like a plain call's
    assert first.json()["error"]["code"] == "upstream_response_too_large"
    first_request = Request.objects.get(public_id=first.headers["ReqRun-Request-Id"])
    assert (first_request.status, first_request.partial) == ("failed", False)


def test_an_empty_stream_is_a_502_not_an_empty_success(live_api, tenant, fake_upstream):
    response, request = stream(live_api, tenant, fake_upstream, HEAD)

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "invalid_event_stream"
    assert (request.status, request.response_body) == ("failed", None)


def test_a_compressed_stream_is_relayed_decoded(live_api, tenant, fake_upstream):
    # Without an Accept-Encoding from ReqRun, HTTP lets an upstream pick any coding.
    head = HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n")
    events = CHUNK + USAGE + DONE

    response, request = stream(live_api, tenant, fake_upstream, head + gzip.compress(events))

    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.content == events
    assert (request.status, request.usage["total_tokens"]) == ("succeeded", 3)


def call_answered_in(coding: bytes, body: bytes, live_api, tenant, fake_upstream, streamed):
    """A call whose upstream answers 200 with `body` under `Content-Encoding: coding`; the
    caller's answer and the request once it has finished."""
    content_type = b"text/event-stream" if streamed else b"application/json"
    head = HEAD.replace(b"text/event-stream", content_type).replace(
        b"\r\n\r\n", b"\r\ncontent-encoding: " + coding + b"\r\n\r\n"
    )
    fake_upstream.answer_raw("raw", head + body)
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "raw", "stream": streamed, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )
    return response, wait_until(lambda: Request.objects.filter(finished_at__isnull=False).first())


@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("coding", [b"br", b"zstd", b"gzip, br"])
def test_an_answer_in_a_compression_reqrun_cannot_read_ends_at_once_with_a_502(
    live_api, tenant, fake_upstream, streamed, coding
):
    # Without an Accept-Encoding HTTP lets an upstream pick these too; httpx would pass
    # their bytes on undecoded, read as a 2xx that is not JSON or not an event stream.
    response, request = call_answered_in(
        coding, b"\x1b\x10\x00\xf8\xa5\x86\x02", live_api, tenant, fake_upstream, streamed
    )

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_content_encoding"
    assert "cannot read" in error["message"] and "Content-Encoding" in error["message"]
    attempt = request.attempts.get()  # one, not retried
    assert (attempt.outcome, attempt.error_code) == ("fatal_error", "invalid_content_encoding")


@pytest.mark.parametrize("streamed", [True, False])
def test_an_answer_not_in_the_encoding_it_names_ends_at_once_with_a_502(
    live_api, tenant, fake_upstream, streamed
):
    # The same bytes would come again: retrying only spends the caller's attempts and time.
    response, request = call_answered_in(
        b"gzip", b'{"not": "gzip at all"}', live_api, tenant, fake_upstream, streamed
    )

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_content_encoding"
    # What went wrong and where to look, not a connection failure on every attempt.
    assert "Content-Encoding" in error["message"] and "proxy" in error["message"]
    assert "connection" not in error["message"]
    assert request.status == "failed"
    attempt = request.attempts.get()  # one, not retried
    assert (attempt.outcome, attempt.error_code) == ("fatal_error", "invalid_content_encoding")
