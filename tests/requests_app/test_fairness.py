"""One tenant's flood waits within its own concurrency limit and never delays another tenant."""

from concurrent.futures import ThreadPoolExecutor

import httpx

from requests_app.engine import concurrency
from requests_app.models import Request
from tests.conftest import wait_until

CHAT = [{"role": "user", "content": "fair"}]


def test_a_flooding_tenant_cannot_delay_another(tenant, other_tenant, live_api):
    tenant.override(concurrency=2)

    def enqueue(n):
        return httpx.post(
            f"{live_api.url}/v1/chat/completions",
            json={"model": "sleep-2000", "messages": CHAT, "n": n},
            headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(enqueue, range(200))) == {202}

    response = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": CHAT},
        headers={"Authorization": f"Bearer {other_tenant.raw_key}"},
        timeout=60,
    )

    assert response.status_code == 200
    theirs = Request.objects.get(public_id=response.headers["reqrun-request-id"])
    assert (theirs.started_at - theirs.created_at).total_seconds() < 5
    # Tenant A never had more than its two calls in flight; the rest are waiting, not refused.
    assert concurrency.in_use(tenant.account.pk) <= 2
    flood = Request.objects.filter(account=tenant.account)
    assert flood.filter(status="running").count() <= 2
    wait_until(
        lambda: flood.filter(status="succeeded").count() >= 2,
        timeout=30,
        message="tenant A's backlog made no progress",
    )
