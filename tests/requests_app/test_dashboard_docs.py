"""The docs (quickstart, API reference, errors), the OpenAPI schema, sign-up and account pages."""

import re
from pathlib import Path

import pytest
from django.urls import URLPattern, reverse
from openapi_spec_validator import validate

from requests_app.api.urls import urlpatterns as v1_urls
from requests_app.error_catalog import ERROR_CODES, TRANSPORT_CODES
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db

APP = Path(__file__).resolve().parents[2] / "requests_app"


def v1_paths() -> set[str]:
    paths = set()
    for pattern in v1_urls:
        assert isinstance(pattern, URLPattern)
        route = str(pattern.pattern)
        paths.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    return paths


def test_the_schema_is_valid_openapi_describing_every_v1_endpoint(client):
    response = client.get("/v1/openapi.json")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    schema = response.json()
    validate(schema)
    assert set(schema["paths"]) == v1_paths()
    assert schema["components"]["securitySchemes"]["ReqRunKey"]["scheme"] == "bearer"
    assert schema["security"] == [{"ReqRunKey": []}]
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "202", "401", "422", "429"} <= set(chat["responses"])
    assert chat["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert {p["name"] for p in chat["parameters"]} >= {"Idempotency-Key", "ReqRun-Wait", "Prefer"}
    listing = schema["paths"]["/v1/requests"]["get"]["responses"]["200"]
    assert listing["content"]["application/json"]["schema"]["$ref"].endswith("/RequestList")
    components = schema["components"]["schemas"]
    status = components["RequestObject"]["properties"]["status"]["$ref"].rsplit("/", 1)[-1]
    assert "queued" in components[status]["enum"]
    assert schema["servers"] == [{"url": "http://testserver"}]


def test_every_error_code_the_api_raises_is_documented(client):
    """Every code the API or the engine can hand a caller, wherever in `requests_app` it is
    written (the dashboard's form errors are not API codes)."""
    raised = set()
    sources = [path for path in APP.rglob("*.py") if "dashboard" not in path.parts]
    assert APP / "api" / "views.py" in sources and APP / "engine" / "upstream.py" in sources
    for source in sources:
        text = source.read_text()
        raised |= set(re.findall(r'\b(?:error_)?code="([a-z_]+)"', text))
        raised |= set(re.findall(r'^\s+code = "([a-z_]+)"', text, re.M))
        raised |= set(re.findall(r'"code": "([a-z_]+)"', text))
        raised |= set(re.findall(r'^[A-Z_]+ = "([a-z_]+)"$', text, re.M))  # a code's constant
    assert {"invalid_wait", "worker_lost"} <= raised  # the scan reaches the subpackages
    documented = {entry.code for entry in ERROR_CODES} | set(TRANSPORT_CODES)
    assert raised - documented == set()

    page = client.get(reverse("docs-errors")).content.decode()
    for entry in ERROR_CODES:
        assert f'id="{entry.code}"' in page


def test_the_api_reference_is_built_from_the_schema(client):
    page = client.get(reverse("docs-api")).content.decode()

    for path in v1_paths():
        assert path in page
    assert 'id="object-RequestObject"' in page
    assert "/v1/openapi.json" in page
    assert "`" not in page.split("<main", 1)[1]  # code spans are rendered, not raw backticks


def test_the_reference_documents_attempt_upstreams_and_the_header(client):
    page = client.get(reverse("docs-api")).content.decode()

    assert "ReqRun-Upstream" in page
    assert "upstream this attempt was sent to" in page


def test_the_failover_page_states_the_breakers_settings(client, settings):
    settings.REQRUN_BREAKER_FAILURES = 7
    settings.REQRUN_BREAKER_COOLDOWN_SECONDS = 45

    page = client.get(reverse("docs-failover")).content.decode()

    assert "After 7 failures" in page and "After 45 seconds one request" in page
    assert "insufficient_quota" in page and "ReqRun-Upstream" in page
    assert reverse("docs-failover") in client.get(reverse("docs")).content.decode()


def test_the_quickstart_uses_this_servers_base_url(client):
    page = client.get(reverse("docs")).content.decode()

    assert 'base_url="http://testserver/v1"' in page
    assert 'baseURL: "http://testserver/v1"' in page
    assert "curl http://testserver/v1/chat/completions" in page
    assert "Idempotency-Key" in page and "respond-async" in page and "stream=True" in page


def test_the_quickstart_links_a_signed_in_users_project(client, alice, alice_account):
    project = ProjectFactory(account=alice_account, name="Chatbot")
    client.force_login(alice)

    page = client.get(reverse("docs")).content.decode()

    assert reverse("api-key-list", args=[project.public_id]) in page


def test_sign_up_says_what_the_user_accepts(client):
    page = client.get(reverse("account_signup")).content.decode()

    assert "By signing up you accept" in page
    for name in ("legal-terms", "legal-privacy", "legal-refunds"):
        assert f'href="{reverse(name)}"' in page
    assert '<label for="id_email"' in page  # every field is labelled


def test_the_account_page_links_profile_security_and_sessions(client, alice, alice_account):
    client.force_login(alice)

    page = client.get(reverse("account")).content.decode()

    for name in (
        "account_email",
        "account_change_password",
        "usersessions_list",
        "security-log",
        "member-list",
        "usage",
    ):
        assert f'href="{reverse(name)}"' in page
    assert client.get(reverse("usersessions_list")).status_code == 200


def test_the_schema_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--fail-on-warn", "--validate", "--file", tmp_path / "s.yaml")

    assert "/v1/chat/completions" in (tmp_path / "s.yaml").read_text()


def test_the_schema_names_every_code_a_proxied_call_or_models_can_answer(client):
    """A `stream` that is not a boolean is a 400 `invalid_stream` on every proxied endpoint,
    and an upstream answer no client could use (a status outside 100–599, a redirect, a 2xx
    that is not JSON) a 502 with its own code, on them and on models."""
    paths = client.get("/v1/openapi.json").json()["paths"]
    unusable = ("`invalid_status`", "`upstream_redirected`", "`upstream_not_json`")

    for path in ("/v1/chat/completions", "/v1/embeddings"):
        responses = paths[path]["post"]["responses"]
        assert "`invalid_stream`" in responses["400"]["description"]
        assert all(code in responses["502"]["description"] for code in unusable)
    for path in ("/v1/models", "/v1/models/{model_id}"):
        operation = paths[path]["get"]
        assert all(code in operation["responses"]["502"]["description"] for code in unusable)
        assert "a 2xx that is not JSON) is a 502" in operation["description"]
