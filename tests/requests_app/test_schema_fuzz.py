"""Schemathesis against the published OpenAPI schema of /v1: no 5xx, every error in the envelope."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from requests_app.api.schema import SCHEMA_URL


@pytest.fixture
def api_schema(live_api, tenant):
    raw = httpx.get(f"{live_api.url}{SCHEMA_URL}").json()
    return schemathesis.openapi.from_dict(raw)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_v1_never_answers_5xx_and_errors_use_the_envelope(case, live_api, tenant):
    response = case.call(
        base_url=live_api.url,
        headers={"Authorization": f"Bearer {tenant.raw_key}", "ReqRun-Wait": "20"},
        timeout=60,
    )

    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
