"""The client's address comes from X-Forwarded-For only when the peer is a trusted proxy
(REQRUN_TRUSTED_PROXIES): for audit events, allauth's login limits and, through the
Procfile's uvicorn, every other per-address limit. A malformed header never breaks a page."""

from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.test import RequestFactory

from accounts.access import client_ip
from accounts.models import AuditEvent
from requests_app.api.authentication import MAX_AUTH_FAILURES_PER_IP, api_key_from_request
from requests_app.errors import InvalidApiKey, RateLimited
from tests.billing import payloads
from tests.billing.conftest import paddle_api, paddle_settings  # noqa: F401
from tests.conftest import ProcfileWeb
from tests.factories import (
    PASSWORD,
    AccountFactory,
    ApiKeyFactory,
    MembershipFactory,
    SubscriptionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent.parent


def address_of(remote_addr: str, forwarded_for: str | None = None) -> str | None:
    headers = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for is not None else {}
    return client_ip(RequestFactory().get("/", REMOTE_ADDR=remote_addr, **headers))


def test_a_forged_header_from_an_untrusted_peer_is_ignored():
    assert address_of("203.0.113.9", "198.51.100.7") == "203.0.113.9"
    assert address_of("203.0.113.9", "127.0.0.1") == "203.0.113.9"


def test_the_header_is_honoured_from_a_trusted_proxy(settings):
    assert address_of("127.0.0.1", "198.51.100.7") == "198.51.100.7"
    assert address_of("127.0.0.1") == "127.0.0.1"  # no header: the proxy's own request
    # Hops left of the one our proxy wrote are the client's own claims.
    assert address_of("127.0.0.1", "10.0.0.1, 198.51.100.7") == "198.51.100.7"
    # A chain of trusted proxies: the first untrusted hop from the right is the client.
    settings.REQRUN_TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]
    assert address_of("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9") == "198.51.100.7"
    assert address_of("10.1.2.3", "[2001:db8::7]:4431") == "2001:db8::7"
    assert address_of("::ffff:127.0.0.1", "198.51.100.8:80") == "198.51.100.8"


def test_trusting_every_peer_believes_only_the_hop_the_router_wrote(settings):
    """`*`: every peer is the platform's router, which appends the address it saw; the hops
    left of that one are whatever the client sent."""
    settings.REQRUN_TRUSTED_PROXIES = ["*"]
    assert address_of("10.1.2.3", "198.51.100.7") == "198.51.100.7"
    assert address_of("10.1.2.3", "6.6.6.6, 198.51.100.7") == "198.51.100.7"
    assert address_of("10.1.2.3") == "10.1.2.3"


@pytest.mark.parametrize(
    "header", ["not-an-address", "198.51.100.7, garbage", "", " , ", "[::1", "1.2.3.4.5", "%"]
)
def test_a_malformed_header_falls_back_to_the_trusted_peer(header):
    assert address_of("127.0.0.1", header) == "127.0.0.1"


def sign_in(client, email, password=PASSWORD, **extra):
    return client.post("/accounts/login/", {"login": email, "password": password}, **extra)


@pytest.fixture
def gil():
    user = UserFactory(email="gil@example.com")
    MembershipFactory(user=user, account=AccountFactory(), role="owner")
    return user


def test_the_audited_sign_in_address_trusts_only_proxies(client, gil):
    response = sign_in(
        client, "gil@example.com", REMOTE_ADDR="203.0.113.21", HTTP_X_FORWARDED_FOR="192.0.2.66"
    )
    assert response.status_code == 302
    client.logout()
    sign_in(client, "gil@example.com", HTTP_X_FORWARDED_FOR="198.51.100.21")  # from 127.0.0.1

    assert list(
        AuditEvent.objects.filter(action="sign_in")
        .order_by("pk")
        .values_list("ip_address", flat=True)
    ) == ["203.0.113.21", "198.51.100.21"]


def locked_out(response) -> bool:
    return "too many failed login attempts" in response.content.decode().lower()


def fail_logins(client, count, **extra):
    # A different (unknown) email each time, so only the per-address limit is in play.
    for number in range(count):
        response = sign_in(client, f"nobody{number}@example.com", "wrong-password-1", **extra)
        assert not locked_out(response)


def test_a_forged_header_does_not_escape_the_login_limit(client):
    fail_logins(client, 10, REMOTE_ADDR="203.0.113.30", HTTP_X_FORWARDED_FOR="192.0.2.1")
    # Rotating the claimed address changes nothing: the peer is what counts.
    response = sign_in(
        client,
        "next@example.com",
        "x",
        REMOTE_ADDR="203.0.113.30",
        HTTP_X_FORWARDED_FOR="192.0.2.2",
    )
    assert locked_out(response)


def test_behind_a_trusted_proxy_each_client_has_its_own_login_limit(client):
    fail_logins(client, 10, HTTP_X_FORWARDED_FOR="198.51.100.40")  # all through 127.0.0.1
    assert locked_out(sign_in(client, "a@example.com", "x", HTTP_X_FORWARDED_FOR="198.51.100.40"))
    # Another client behind the same proxy is not locked out by the first one's failures.
    assert not locked_out(
        sign_in(client, "b@example.com", "x", HTTP_X_FORWARDED_FOR="198.51.100.41")
    )


def test_trusting_every_peer_a_forged_hop_does_not_escape_the_login_limit(client, settings):
    settings.REQRUN_TRUSTED_PROXIES = ["*"]
    # The router appends the client's real address; the client rotates the hop before it.
    fail_logins(client, 10, HTTP_X_FORWARDED_FOR="192.0.2.1, 198.51.100.50")
    response = sign_in(
        client, "next@example.com", "x", HTTP_X_FORWARDED_FOR="192.0.2.2, 198.51.100.50"
    )
    assert locked_out(response)


def test_a_malformed_header_is_not_a_server_error(client, gil):
    for header in ("garbage", "198.51.100.7,,[", "\u00e9\u00e9, 1.2.3"):
        response = sign_in(client, "gil@example.com", "wrong", HTTP_X_FORWARDED_FOR=header)
        assert response.status_code == 200
        assert (
            client.get("/accounts/password/reset/", HTTP_X_FORWARDED_FOR=header).status_code == 200
        )


@pytest.fixture
def procfile_web(tmp_path, monkeypatch):
    """The Procfile's `web` line, as an operator runs it, on a free loopback port."""
    monkeypatch.delenv("REQRUN_TRUSTED_PROXIES", raising=False)  # default: only 127.0.0.1
    web = ProcfileWeb(tmp_path / "web.log").start()
    yield web.url
    web.stop()


def bad_key_statuses(base_url: str, *, source: str, count: int) -> list[int]:
    """`count` calls with a bad ReqRun key from `source`, each claiming another address."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, base_url=base_url) as http:
        return [
            http.get(
                "/v1/models",
                headers={"Authorization": "Bearer not-a-key", "X-Forwarded-For": f"192.0.2.{n}"},
            ).status_code
            for n in range(count)
        ]


@pytest.mark.timeout(120)
def test_the_web_process_believes_forwarded_for_only_from_trusted_proxies(procfile_web):
    store = redis.Redis.from_url(settings.REDIS_URL)
    store.delete(*[f"reqrun:authfail:ip:{a}" for a in ("127.0.0.1", "127.0.0.77")])
    store.delete(*[f"reqrun:authfail:ip:192.0.2.{n}" for n in range(40)])

    # 127.0.0.77 is not a trusted proxy: its claimed addresses are ignored, so the lockout
    # for repeated bad keys from one address catches it.
    statuses = bad_key_statuses(procfile_web, source="127.0.0.77", count=35)
    assert statuses[:30] == [401] * 30
    assert statuses[30:] == [429] * 5

    # From the trusted proxy each forwarded client counts on its own.
    store.delete(*[f"reqrun:authfail:ip:192.0.2.{n}" for n in range(40)])
    assert bad_key_statuses(procfile_web, source="127.0.0.1", count=35) == [401] * 35


def test_the_api_counts_bad_keys_per_forwarded_client_behind_a_trusted_proxy(settings):
    """Without uvicorn's rewriting in front (another server, a direct WSGI mount), the /v1
    lockout still counts per client: one client's bad keys never lock out its neighbours."""
    store = redis.Redis.from_url(settings.REDIS_URL)
    addresses = ["127.0.0.1", "198.51.100.21", "198.51.100.22"]
    store.delete(*[f"reqrun:authfail:ip:{address}" for address in addresses])
    api_key = ApiKeyFactory()

    def call(forwarded_for: str, authorization: str):
        meta = {
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_X_FORWARDED_FOR": forwarded_for,
            "HTTP_AUTHORIZATION": authorization,
        }
        return api_key_from_request(meta)

    for _ in range(MAX_AUTH_FAILURES_PER_IP):
        with pytest.raises(InvalidApiKey):
            call("198.51.100.21", "Bearer not-a-key")
    with pytest.raises(RateLimited):
        call("198.51.100.21", f"Bearer {api_key.raw_key}")

    assert call("198.51.100.22", f"Bearer {api_key.raw_key}") == api_key
    store.delete(*[f"reqrun:authfail:ip:{address}" for address in addresses])


def test_billing_audits_the_forwarded_client_address(client, alice, paddle_settings, paddle_api):  # noqa: F811
    account = AccountFactory()
    MembershipFactory(user=alice, account=account, role="owner")
    subscription = SubscriptionFactory(account=account)
    paddle_api.subscriptions[subscription.paddle_subscription_id] = payloads.subscription(
        account_id=account.public_id, subscription_id=subscription.paddle_subscription_id
    )
    client.force_login(alice)

    response = client.post(
        "/app/billing/cancel", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.23"
    )

    assert response.status_code == 302
    event = AuditEvent.objects.get(account=account, action="subscription_cancel_scheduled")
    assert event.ip_address == "198.51.100.23"
