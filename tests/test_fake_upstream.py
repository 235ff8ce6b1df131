"""The fake upstream speaks enough OpenAI for the official SDK and fails exactly as scripted."""

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream

AUTH = {"authorization": "Bearer sk-test"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def running() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def server(running: FakeUpstream) -> FakeUpstream:
    running.reset()
    return running


@pytest.fixture
def client(server: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def post(server: FakeUpstream, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, **CHAT, **extra}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=AUTH, timeout=5)


def test_sdk_chat_completion_succeeds(server: FakeUpstream, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", **CHAT)

    assert completion.choices[0].message.content == "Hello from fake upstream"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 4
    [recorded] = server.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.step == "200"
    assert recorded.body["model"] == "gpt-4o-mini"
    assert recorded.headers["authorization"] == "Bearer sk-test"


def test_other_endpoints_answer_in_openai_shapes(client: openai.OpenAI) -> None:
    assert client.responses.create(model="gpt-4o", input="hi").usage.total_tokens > 0
    assert len(client.embeddings.create(model="e", input=["a", "b"]).data) == 2
    assert client.images.generate(model="gpt-image-1", prompt="p").data[0].b64_json
    assert client.moderations.create(input="x").results[0].flagged is False
    assert "gpt-4o-mini" in [model.id for model in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("missing-model")


def test_auth_unknown_paths_and_bad_json_get_error_envelopes(server: FakeUpstream) -> None:
    url = f"{server.base_url}/chat/completions"
    missing = httpx.post(url, json={"model": "m"})
    bad_key = httpx.post(url, json={"model": "m"}, headers={"authorization": "Bearer sk-bad"})
    unknown = httpx.post(f"{server.base_url}/nope", json={}, headers=AUTH)
    not_json = httpx.post(url, content=b"{nope", headers=AUTH)

    assert [r.status_code for r in (missing, bad_key, unknown, not_json)] == [401, 401, 404, 400]
    assert missing.json()["error"]["code"] == bad_key.json()["error"]["code"] == "invalid_api_key"
    assert unknown.json()["error"]["type"] == "invalid_request_error"


def test_script_model_walks_its_sequence_per_body(server: FakeUpstream) -> None:
    first, second, third = (post(server, "script:503,200") for _ in range(3))
    other_body = post(server, "script:503,200", user="someone-else")

    assert [first.status_code, second.status_code, third.status_code] == [503, 200, 200]
    assert first.json()["error"]["type"] == "server_error"
    assert second.json()["object"] == "chat.completion"
    assert second.headers["x-ratelimit-remaining-requests"] == "9999"
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert other_body.status_code == 503


def test_script_key_header_and_programmatic_scripts(server: FakeUpstream) -> None:
    server.script("gpt-4o", ["429q", "200"])
    keyed = {**AUTH, "x-fake-script-key": "k1"}
    url = f"{server.base_url}/chat/completions"

    quota = post(server, "gpt-4o")
    walked = [
        httpx.post(url, json={"model": f"script:500,{n}", **CHAT}, headers=keyed)
        for n in (409, 408)
    ]

    assert quota.json()["error"]["code"] == "insufficient_quota"
    assert post(server, "gpt-4o").status_code == 200
    assert [response.status_code for response in walked] == [500, 408]


def test_retry_after_headers(server: FakeUpstream) -> None:
    seconds = post(server, "script:429ra7")
    millis = post(server, "script:429ram250")
    unavailable = post(server, "script:503ra2")

    assert (seconds.status_code, seconds.headers["retry-after"]) == (429, "7")
    assert seconds.json()["error"]["code"] == "rate_limit_exceeded"
    assert millis.headers["retry-after-ms"] == "250"
    assert (unavailable.status_code, unavailable.headers["retry-after"]) == (503, "2")


def test_a_script_answers_with_its_headers_plain_and_streamed(server: FakeUpstream) -> None:
    server.script("headed", "200", headers={"x-request-id": "req_given", "x-extra": "1"})

    plain = post(server, "headed")
    streamed = post(server, "headed", stream=True)

    for response in (plain, streamed):
        assert response.status_code == 200
        assert response.headers.get_list("x-request-id") == ["req_given"]  # replaced, not added
        assert response.headers["x-extra"] == "1"
    assert b"data: [DONE]" in streamed.content


def test_drop_and_hang_fail_at_the_transport(server: FakeUpstream) -> None:
    with pytest.raises(httpx.TransportError):
        post(server, "script:drop")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "script:hang"},
            headers=AUTH,
            timeout=0.2,
        )
    assert [request.step for request in server.requests] == ["drop", "hang"]


def test_streaming_chat_yields_chunks_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True}, **CHAT
    )
    chunks = list(stream)

    contents = [chunk.choices[0].delta.content for chunk in chunks[:-1]]
    assert len([content for content in contents if content]) >= 3
    assert "".join(filter(None, contents)) == "Hello from fake upstream"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_cut_stream_breaks_iteration(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="script:cut2", stream=True, **CHAT)
    received = []

    with pytest.raises((httpx.TransportError, openai.APIConnectionError)):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2


def test_responses_stream_reaches_completed(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))

    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.total_tokens > 0
    assert "".join(deltas) == events[-1].response.output_text


def test_count_by_path_and_predicate(server: FakeUpstream, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", **CHAT)
    client.embeddings.create(model="e", input="x")
    post(server, "script:500")

    assert server.count() == 3
    assert server.count("/chat/completions") == server.count("/v1/chat/completions") == 2
    assert server.count(predicate=lambda request: request.step == "500") == 1
    server.reset()
    assert server.count() == 0


def test_cli_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", "0", "--delay-ms", "0"],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("fake upstream listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        assert httpx.get(f"{base_url}/models", headers=AUTH).json()["object"] == "list"
    finally:
        process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_a_default_step_answers_every_unscripted_model() -> None:
    with FakeUpstream(default_step="503") as failing:
        response = httpx.post(
            f"{failing.base_url}/chat/completions",
            json={"model": "gpt-any", "messages": []},
            headers={"Authorization": "Bearer sk-test"},
        )
        scripted = httpx.post(
            f"{failing.base_url}/chat/completions",
            json={"model": "script:200", "messages": []},
            headers={"Authorization": "Bearer sk-test"},
        )

    assert response.status_code == 503
    assert scripted.status_code == 200
