"""One tenant's flood waits within its own concurrency limit and never delays another tenant."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from requests_app.engine import concurrency
from requests_app.engine.notifications import CHANNEL
from requests_app.engine.recovery import sweep
from requests_app.engine.redis_client import client
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


def test_the_slot_is_freed_before_the_caller_is_told(tenant, sdk):
    # The release goes in the same Redis round trip as the completion notice, ahead of it: a
    # caller's next call never finds its own finished call still holding the slot.
    tenant.override(concurrency=1)
    slots = f"reqrun:slots:{tenant.account.pk}"
    seen: list[tuple[str, str]] = []

    def watch(monitor):
        for command in monitor.listen():
            name, *args = command["command"].split(" ")
            seen.append((name.upper(), args[0].strip('"') if args else ""))
            if seen[-1] == ("PUBLISH", CHANNEL):
                return

    with client().monitor() as monitor:
        watcher = threading.Thread(target=watch, args=(monitor,), daemon=True)
        watcher.start()
        sdk.chat.completions.create(model="gpt-test", messages=CHAT)
        watcher.join(10)

    order = [name for name, key in seen if (name, key) in {("ZREM", slots), ("PUBLISH", CHANNEL)}]
    assert order == ["ZREM", "PUBLISH"], [c for c in seen if c[0] in ("ZREM", "PUBLISH")]
    assert concurrency.in_use(tenant.account.pk) == 0


def test_a_request_waiting_for_a_slot_expires_at_its_deadline(tenant, live_api):
    tenant.override(concurrency=0)  # an operator's override: no slot ever frees
    tenant.project.deadline_seconds = 2
    tenant.project.save()
    accepted = httpx.post(
        f"{live_api.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Prefer": "respond-async"},
    ).json()

    def ended():
        sweep()  # what beat does every few seconds: publishes the deferred request again
        return Request.objects.filter(public_id=accepted["id"], finished_at__isnull=False).first()

    request = wait_until(ended, timeout=15, interval=0.5)

    assert request.status == "expired"
    assert request.error["code"] == "deadline_exceeded"
    assert (request.finished_at - request.deadline_at).total_seconds() < 3
