"""Every /v1 answer may carry a prompt, an answer or a request object: no cache keeps it."""

import httpx

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def test_every_api_answer_says_no_store(tenant, live_api):
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        headers = {**auth, **kwargs.pop("headers", {})}
        return httpx.request(method, f"{live_api.url}{path}", headers=headers, timeout=60, **kwargs)

    keyed = {"Idempotency-Key": "k1"}
    answered = call("POST", "/v1/chat/completions", json=CHAT, headers=keyed)
    request_id = answered.headers["reqrun-request-id"]
    responses = {
        "answer": answered,
        "replay": call("POST", "/v1/chat/completions", json=CHAT, headers=keyed),
        "stream": call("POST", "/v1/chat/completions", json={**CHAT, "stream": True}),
        "accepted": call(
            "POST", "/v1/chat/completions", json=CHAT, headers={"Prefer": "respond-async"}
        ),
        "request": call("GET", f"/v1/requests/{request_id}"),
        "list": call("GET", "/v1/requests"),
        "usage": call("GET", "/v1/usage"),
        "models": call("GET", "/v1/models"),
        "not found": call("GET", "/v1/requests/req_unknown"),
        "bad input": call("POST", "/v1/chat/completions", content=b"{not json"),
        "unknown path": call("GET", "/v1/nothing-here"),
        "wrong method": call("DELETE", "/v1/usage"),
        "no key": httpx.get(f"{live_api.url}/v1/requests", timeout=60),
    }

    assert {name: response.status_code for name, response in responses.items()} == {
        "answer": 200,
        "replay": 200,
        "stream": 200,
        "accepted": 202,
        "request": 200,
        "list": 200,
        "usage": 200,
        "models": 200,
        "not found": 404,
        "bad input": 400,
        "unknown path": 404,
        "wrong method": 405,
        "no key": 401,
    }
    assert responses["replay"].headers["idempotent-replayed"] == "true"
    assert responses["stream"].headers["content-type"].startswith("text/event-stream")
    cache_control = {
        name: response.headers.get("cache-control") for name, response in responses.items()
    }
    assert cache_control == dict.fromkeys(responses, "no-store")
