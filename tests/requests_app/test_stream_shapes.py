"""Streams as upstreams really send them: where the first line's bytes split, how the
stream ends, what its events hold. The fake upstream's raw answers give the exact bytes."""

import httpx
import pytest

from requests_app.models import Request
from tests.conftest import wait_until

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


def stream(live_api, tenant, model: str, endpoint: str = "/v1/chat/completions"):
    response = httpx.post(
        f"{live_api.url}{endpoint}",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        timeout=30,
    )
    request = wait_until(lambda: Request.objects.filter(finished_at__isnull=False).first())
    return response, request


@pytest.mark.parametrize(
    "pieces",
    [
        (HEAD + b"d", b"ata" + CHUNK[4:] + USAGE + DONE),
        (HEAD + b"\xef\xbb\xbf" + CHUNK + USAGE + DONE,),
        (HEAD + CHUNK + USAGE + b"data:[DONE]\n\n",),
        (HEAD + (CHUNK + USAGE + DONE).replace(b"\n", b"\r"),),
        (HEAD + CHUNK + b'data: {"type":"response.completed","response":"x"}\n\n' + USAGE + DONE,),
    ],
    ids=[
        "first line in two pieces",
        "byte order mark",
        "no space after data:",
        "CR line endings",
        "an event whose response is a string",
    ],
)
def test_a_whole_stream_is_relayed_and_recorded_as_succeeded(
    live_api, tenant, fake_upstream, pieces
):
    fake_upstream.answer_raw("raw", *pieces)

    response, request = stream(live_api, tenant, "raw")

    assert response.status_code == 200
    assert response.content == b"".join(pieces).removeprefix(HEAD)  # byte for byte
    assert (request.status, request.partial, request.error) == ("succeeded", False, None)
    assert request.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_a_responses_stream_that_ends_incomplete_is_an_answer_not_a_break(
    live_api, tenant, fake_upstream
):
    ended = (
        b"event: response.incomplete\n"
        b'data: {"type":"response.incomplete","response":{"id":"resp_1","status":"incomplete",'
        b'"usage":{"input_tokens":2,"output_tokens":3,"total_tokens":5}}}\n\n'
    )
    fake_upstream.answer_raw("raw", HEAD + ended)

    response, request = stream(live_api, tenant, "raw", "/v1/responses")

    assert response.content == ended  # and no error event of ours after it
    assert (request.status, request.partial) == ("succeeded", False)
    assert request.usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_a_cut_stream_whose_text_mentions_the_end_marker_is_still_cut(
    live_api, tenant, fake_upstream
):
    mention = (
        b'data: {"id":"c1","object":"chat.completion.chunk",'
        b'"choices":[{"index":0,"delta":{"content":"it ends with data: [DONE] and"}}]}\n\n'
    )
    fake_upstream.answer_raw("raw", HEAD + mention)  # then the connection closes

    response, request = stream(live_api, tenant, "raw")

    assert b"event: error" in response.content
    assert (request.status, request.partial) == ("failed", True)


def test_an_empty_stream_is_a_502_not_an_empty_success(live_api, tenant, fake_upstream):
    fake_upstream.answer_raw("raw", HEAD)

    response, request = stream(live_api, tenant, "raw")

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "invalid_event_stream"
    assert (request.status, request.response_body) == ("failed", None)
