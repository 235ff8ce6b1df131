"""Bearer ReqRun keys for /v1: who is calling, and may their account and project call now."""

from rest_framework.authentication import BaseAuthentication

from core.client_address import client_ip_of
from projects.limits import limits_for
from projects.models import ApiKey
from projects.services import authenticate_api_key, parse_api_key
from requests_app.api import ratelimit
from requests_app.engine.redis_client import client
from requests_app.errors import (
    INVALID_KEY_MESSAGE,
    MISSING_KEY_MESSAGE,
    InvalidApiKey,
    RateLimited,
    Suspended,
)

# Repeated bad keys from one address are refused for a while, whatever key comes next;
# repeated bad secrets for one key prefix are answered 429 instead of 401, but the right
# secret always passes, so someone who saw a key's prefix cannot lock its owner out.
AUTH_FAILURE_WINDOW_SECONDS = 300
MAX_AUTH_FAILURES_PER_IP = 30
MAX_AUTH_FAILURES_PER_PREFIX = 10


def api_key_from_header(authorization: str) -> ApiKey:
    """The active key named by an Authorization header, or InvalidApiKey / Suspended."""
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise InvalidApiKey(MISSING_KEY_MESSAGE)
    api_key = authenticate_api_key(raw.strip())
    if api_key is None:
        raise InvalidApiKey(INVALID_KEY_MESSAGE)
    account = api_key.project.account
    if account.is_suspended:
        raise Suspended(
            "This account is suspended. Contact support@reqrun.com.", code="account_suspended"
        )
    if api_key.project.is_suspended:
        raise Suspended(
            "This project is suspended. Contact support@reqrun.com.", code="project_suspended"
        )
    return api_key


def _too_many_failures() -> RateLimited:
    return RateLimited(
        "Too many requests with an invalid API key. Check the key and retry later.",
        code="too_many_auth_failures",
        headers={"Retry-After": str(AUTH_FAILURE_WINDOW_SECONDS)},
    )


def _address_key(meta) -> str:
    return f"reqrun:authfail:ip:{client_ip_of(meta) or ''}"


def _count_failure(meta, address_key: str) -> None:
    """A bad key: count it per address and per key prefix; 429 once either is over."""
    counters = [(address_key, MAX_AUTH_FAILURES_PER_IP)]
    parsed = parse_api_key(meta.get("HTTP_AUTHORIZATION", "").partition(" ")[2].strip())
    if parsed:
        counters.append((f"reqrun:authfail:prefix:{parsed[0]}", MAX_AUTH_FAILURES_PER_PREFIX))
    with client().pipeline(transaction=False) as pipe:
        for key, _ in counters:
            pipe.incr(key)
            pipe.expire(key, AUTH_FAILURE_WINDOW_SECONDS)  # sliding: each failure extends it
        counts = pipe.execute()[::2]
    if any(count > limit for count, (_, limit) in zip(counts, counters, strict=True)):
        raise _too_many_failures() from None


def _blocked(address_key: str) -> bool:
    return int(client().get(address_key) or 0) >= MAX_AUTH_FAILURES_PER_IP


def authenticate(
    meta, *, rate: str | None = None
) -> tuple[ApiKey, ratelimit.RateLimitState | None]:
    """Authenticate a /v1 call, counting failures per address and per key prefix.

    An address with too many recent failures is refused whatever key it sends. For a
    good key that check shares one Redis round trip with the account's rate limit:
    `rate="hit"` counts this call, `rate="peek"` only reads the window, None leaves it.
    """
    address_key = _address_key(meta)
    try:
        api_key = api_key_from_header(meta.get("HTTP_AUTHORIZATION", ""))
    except InvalidApiKey:
        if _blocked(address_key):
            raise _too_many_failures() from None
        _count_failure(meta, address_key)
        raise
    except Suspended:  # a blocked address learns nothing more about the key
        if _blocked(address_key):
            raise _too_many_failures() from None
        raise
    with client().pipeline(transaction=False) as pipe:
        pipe.get(address_key)
        state = None
        if rate is not None:
            state = ratelimit.queue(
                pipe,
                account_id=api_key.project.account_id,
                limit=limits_for(api_key.project.account, preloaded=True).requests_per_minute,
                count=rate == "hit",
            )
        results = pipe.execute()
    if int(results[0] or 0) >= MAX_AUTH_FAILURES_PER_IP:
        raise _too_many_failures()
    return api_key, state(results[1:]) if state else None


def api_key_from_request(meta) -> ApiKey:
    """Authenticate a /v1 call (see `authenticate`), leaving the rate limit alone."""
    return authenticate(meta)[0]


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication: `request.auth` is the ApiKey; `request.user` stays anonymous."""

    def authenticate(self, request):
        return None, api_key_from_request(request.META)

    def authenticate_header(self, request):
        return 'Bearer realm="reqrun"'
