"""Schemathesis against the published OpenAPI schema of /v1, on the live ASGI app.

Every answer must be one the schema declares — status, content type, headers and body — so
the schema cannot drift from what the server enforces.
"""

import httpx
import pytest
import schemathesis
from django.conf import settings as django_settings
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis import checks as schemathesis_checks

from requests_app.api.schema import SCHEMA_URL

CHECKS = [
    schemathesis_checks.not_a_server_error,
    schemathesis_checks.status_code_conformance,
    schemathesis_checks.content_type_conformance,
    schemathesis_checks.response_headers_conformance,
    schemathesis_checks.response_schema_conformance,
]


@pytest.fixture
def api_schema(live_api, tenant):
    raw = httpx.get(f"{live_api.url}{SCHEMA_URL}").json()
    loaded = schemathesis.openapi.from_dict(raw)
    # Data the schema calls valid must get an answer the schema declares. (Negative data
    # also reaches the upstream unchanged, whose own checks the fake upstream lacks.)
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE])
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_v1_answer_is_one_the_schema_declares(case, live_api, tenant):
    # The tenant's key replaces whatever the case drew for Authorization; every other
    # header and parameter is the case's own, so limits the schema states are exercised.
    response = case.call_and_validate(
        base_url=live_api.url,
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        checks=CHECKS,
        timeout=60,
    )

    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


def test_an_unrouted_v1_path_answers_404_in_the_envelope(live_api, tenant):
    for path in ("/v1/models/%0A", "/v1/no-such-endpoint"):
        response = httpx.get(
            f"{live_api.url}{path}", headers={"Authorization": f"Bearer {tenant.raw_key}"}
        )

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_method_the_endpoint_does_not_serve_answers_405_in_the_envelope(live_api, tenant):
    for method, path in (
        ("DELETE", "/v1/chat/completions"),
        ("PUT", "/v1/usage"),
        ("OPTIONS", "/v1/chat/completions"),  # not DRF's description of the view
        ("OPTIONS", "/v1/requests"),
    ):
        response = httpx.request(
            method, f"{live_api.url}{path}", headers={"Authorization": f"Bearer {tenant.raw_key}"}
        )

        assert response.status_code == 405, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_405_names_in_allow_only_the_methods_the_path_serves(live_api, tenant):
    """`Allow` tells a client what to use instead; OPTIONS is itself a 405, so it is not
    offered, and a path that exists for no method offers nothing."""
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    expected = {
        ("DELETE", "/v1/chat/completions"): {"POST"},
        ("OPTIONS", "/v1/chat/completions"): {"POST"},
        ("PUT", "/v1/usage"): {"GET", "HEAD"},
        ("OPTIONS", "/v1/requests"): {"GET", "HEAD"},
    }
    for (method, path), allowed in expected.items():
        response = httpx.request(method, f"{live_api.url}{path}", headers=headers)

        assert response.status_code == 405
        assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed

    unknown = httpx.get(f"{live_api.url}/v1/no-such-endpoint", headers=headers)
    assert unknown.status_code == 404 and "Allow" not in unknown.headers


def test_created_after_past_the_year_9999_is_a_400(live_api, tenant):
    response = httpx.get(
        f"{live_api.url}/v1/requests",
        params={"created_after": str(2**40 - 1)},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "created_after"


@pytest.mark.parametrize("name", ["limit", "created_after"])
@pytest.mark.parametrize("value", [" 5", "1_0", "\u0665", "+5", "-1"])
def test_a_number_in_the_list_query_is_plain_ascii_digits(live_api, tenant, name, value):
    # int() would take spaces, underscores, a sign and other scripts' digits.
    response = httpx.get(
        f"{live_api.url}/v1/requests",
        params={name: value},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == name


def test_a_page_of_none_is_a_400_and_created_after_the_epoch_lists_all(live_api, tenant):
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": []},
        headers=headers | {"Prefer": "respond-async"},
    )

    empty_page = httpx.get(f"{live_api.url}/v1/requests", params={"limit": "0"}, headers=headers)
    since_epoch = httpx.get(
        f"{live_api.url}/v1/requests", params={"created_after": "0"}, headers=headers
    )

    assert empty_page.status_code == 400
    assert empty_page.json()["error"]["param"] == "limit"
    assert since_epoch.status_code == 200
    assert len(since_epoch.json()["data"]) == 1


@pytest.mark.parametrize("value", ["chat/completions", "/v1/models", "/v1/chat/completions/"])
def test_an_endpoint_filter_naming_no_proxied_endpoint_is_a_400(live_api, tenant, value):
    """`endpoint` takes one of a fixed list, like `status`: a typo is told, not answered
    with an empty list that reads as “no such requests”."""
    response = httpx.get(
        f"{live_api.url}/v1/requests",
        params={"endpoint": value},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "endpoint" and error["type"] == "invalid_request_error"
    assert "/v1/chat/completions" in error["message"]


def test_an_endpoint_filter_lists_that_endpoints_requests(live_api, tenant):
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    httpx.post(
        f"{live_api.url}/v1/embeddings",
        json={"model": "embed-test", "input": "x"},
        headers=headers | {"Prefer": "respond-async"},
    )

    listed = httpx.get(
        f"{live_api.url}/v1/requests", params={"endpoint": "/v1/embeddings"}, headers=headers
    )
    other = httpx.get(
        f"{live_api.url}/v1/requests", params={"endpoint": "/v1/moderations"}, headers=headers
    )

    assert [item["endpoint"] for item in listed.json()["data"]] == ["/v1/embeddings"]
    assert other.status_code == 200 and other.json()["data"] == []


def test_a_nul_in_a_text_filter_is_a_400(live_api, tenant):
    for name in ("after", "endpoint", "idempotency_key"):
        response = httpx.get(
            f"{live_api.url}/v1/requests",
            params={name: "a\x00b"},
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
        )

        assert response.status_code == 400


@pytest.mark.parametrize("path", ["/v1/requests", "/v1/requests/{id}"])
def test_a_query_string_with_too_many_parameters_is_a_400(live_api, tenant, path):
    """Django refuses to parse more than DATA_UPLOAD_MAX_NUMBER_FIELDS parameters: the
    caller's mistake, told in the envelope, not an internal error."""
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    accepted = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": []},
        headers=headers | {"Prefer": "respond-async"},
    )
    too_many = django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1
    query = "&".join(f"p{number}=1" for number in range(too_many))

    response = httpx.get(
        f"{live_api.url}{path.format(id=accepted.json()['id'])}?{query}", headers=headers
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "parameters" in error["message"]


@pytest.mark.parametrize("stream", ["abc", "true", 1, 0, [], {}])
def test_a_stream_flag_that_is_not_a_boolean_is_a_400(live_api, tenant, stream):
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": [], "stream": stream},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"


def test_a_nul_in_a_request_id_is_a_404_in_the_envelope(live_api, tenant):
    headers = {"Authorization": f"Bearer {tenant.raw_key}"}
    for method, path in (
        ("GET", "/v1/requests/req_%00a"),
        ("POST", "/v1/requests/req_%00a/cancel"),
    ):
        response = httpx.request(method, f"{live_api.url}{path}", headers=headers)

        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "wait",
    ["\u00b2", "9" * 5000, "-1", "61", "1.5", ""],
    ids=["superscript-two", "5000-digits", "negative", "over-60", "fraction", "empty"],
)
def test_a_wait_that_is_not_whole_seconds_in_range_is_a_400(live_api, tenant, wait):
    created = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
    )

    response = httpx.get(
        f"{live_api.url}/v1/requests/{created.json()['id']}",
        params={"wait": wait},
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "wait"


@pytest.mark.parametrize(
    ("prefer", "status"),
    [
        ("respond-async", 202),
        ("RESPOND-ASYNC", 202),  # preference names are case-insensitive (RFC 7240)
        ("return=minimal, respond-async", 202),
        ("respond-async, wait=10", 202),
        ("no-respond-async", 200),
        ("respond-async-later", 200),
        ("handling=lenient", 200),
    ],
)
def test_prefer_asks_for_async_only_by_the_preference_itself(live_api, tenant, prefer, status):
    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": prefer},
        timeout=60,
    )

    assert response.status_code == status, response.text
