"""The HTTP client that calls upstream providers: pooled, no redirects, guarded at connect time."""

import threading
import time
from dataclasses import dataclass

import httpcore
import httpx
from django.conf import settings

from projects.upstream_guard import check_address

# Response headers that describe the customer's provider key; clients keep seeing them.
FORWARDED_RESPONSE_HEADERS = ("x-request-id", "content-type", "openai-processing-ms")
FORWARDED_RESPONSE_PREFIXES = ("x-ratelimit-",)
CONNECT_TIMEOUT_SECONDS = 10.0


class GuardedBackend(httpcore.SyncBackend):
    """Checks the address actually connected to, so DNS changes cannot reach private networks."""

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
        peer = stream.get_extra_info("socket").getpeername()[0]
        try:
            check_address(peer)
        except Exception:
            stream.close()
            raise
        return stream


@dataclass
class UpstreamResponse:
    status_code: int
    headers: dict[str, str]
    body: bytes
    retry_after_header: httpx.Headers


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def client() -> httpx.Client:
    """One pooled client per process, shared by the worker's threads."""
    global _client
    with _client_lock:
        if _client is None:
            transport = httpx.HTTPTransport(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
                retries=0,
            )
            # httpx has no public hook for the network backend; the pool reads this attribute
            # when it opens each connection.
            transport._pool._network_backend = GuardedBackend()
            _client = httpx.Client(transport=transport, follow_redirects=False)
        return _client


def endpoint_url(base_url: str, endpoint: str) -> str:
    """`https://api.openai.com/v1` + `/v1/chat/completions` → `…/v1/chat/completions`."""
    return base_url.rstrip("/") + endpoint.removeprefix("/v1")


def forwarded_headers(headers: httpx.Headers) -> dict[str, str]:
    return {
        name: value
        for name, value in headers.items()
        if name in FORWARDED_RESPONSE_HEADERS or name.startswith(FORWARDED_RESPONSE_PREFIXES)
    }


class ResponseTooLarge(Exception):
    """The answer passed REQRUN_MAX_RESPONSE_BYTES; it is neither kept nor relayed."""


def call(
    *, method: str, url: str, provider_key: str, body: bytes | None, timeout: float
) -> UpstreamResponse:
    """One call, read within `timeout` seconds in all and at most REQRUN_MAX_RESPONSE_BYTES.

    httpx's timeouts bound each read, so an upstream trickling a byte at a time could hold
    an attempt far past its timeout (and its lease); the whole answer is held to it here.
    """
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {provider_key}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    with client().stream(
        method,
        url,
        content=body,
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
    ) as response:
        chunks, size, limit = [], 0, settings.REQRUN_MAX_RESPONSE_BYTES
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(f"more than {limit} bytes")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(
                    "the answer did not finish within the attempt timeout",
                    request=response.request,
                )
            chunks.append(chunk)
    return UpstreamResponse(
        status_code=response.status_code,
        headers=forwarded_headers(response.headers),
        body=b"".join(chunks),
        retry_after_header=response.headers,
    )
