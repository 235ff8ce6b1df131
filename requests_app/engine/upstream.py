"""The one HTTP client that calls upstream providers, and the one `classify()` of what it got.

Pooled, no redirects, guarded at connect time. `call()` reads a whole answer and judges it,
`open_stream()` hands a streamed one to the relay; whatever either gets or raises becomes an
`AttemptResult` through `classify()`, so plain and streamed attempts judge answers alike.
"""

import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpcore
import httpx
import redis
from django.conf import settings

from core.endpoints import upstream_path
from core.untrusted import NestedTooDeeply, parse_json, storable
from projects.upstream_guard import UpstreamNotAllowed, check_address
from requests_app.engine import retry_policy
from requests_app.engine.outcomes import AttemptResult, UpstreamResponse
from requests_app.engine.usage import normalise_usage
from requests_app.models import Attempt

logger = logging.getLogger(__name__)

# Response headers that describe the customer's provider key; clients keep seeing them.
FORWARDED_RESPONSE_HEADERS = ("x-request-id", "content-type", "openai-processing-ms")
FORWARDED_RESPONSE_PREFIXES = ("x-ratelimit-",)
# Each, and all together, within what every client reads: Node's refuses a response head
# over 16 KB, h11 at its defaults too, and nginx in front of ReqRun one over its
# proxy_buffer_size (a 4 KB page by default). Real ones are far smaller: an x-request-id is
# under 100 bytes, a rate-limit value a few. A header's name and value count, in the order
# the upstream sent them.
MAX_FORWARDED_HEADER_BYTES = 512
MAX_FORWARDED_HEADERS_BYTES = 2048
# What no server may send in a header value (uvicorn refuses it and drops the connection).
UNSENDABLE_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONNECT_TIMEOUT_SECONDS = 10.0
USER_AGENT = "ReqRun"


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


_pools = threading.local()
# Idle connections each thread keeps, one per upstream host it calls: with the worker's
# threads, at most a few hundred sockets, well inside a process's default 1,024 files.
KEEPALIVE_PER_THREAD = 4


def transport() -> httpx.HTTPTransport:
    """This thread's connection pool to the upstreams.

    One per thread rather than one per process: httpcore's pool runs every request's
    bookkeeping under one lock and, under it, checks each idle connection with a poll(), so
    with the worker's threads sharing one pool that bookkeeping grew with the thread count
    and became the largest cost of an attempt (bench/README, stop 15). A thread makes one
    upstream call at a time, so its own pool holds a connection per upstream host it uses.
    """
    pool = getattr(_pools, "transport", None)
    if pool is None:
        pool = httpx.HTTPTransport(
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=KEEPALIVE_PER_THREAD
            ),
            retries=0,
        )
        # httpx has no public hook for the network backend; the pool reads this attribute
        # when it opens each connection.
        pool._pool._network_backend = GuardedBackend()
        _pools.transport = pool
    return pool


def interrupt(pool: httpx.HTTPTransport) -> None:
    """Cut, from another thread, the call that `pool`'s thread has in flight, even one still
    waiting for the upstream's headers, where there is no response yet to close. A shutdown
    wakes a read blocked on the socket, which closing it would not. (httpx has no public
    way to it: the pool's connections, as httpcore 1.x keeps them.)"""
    for connection in pool._pool.connections:
        if connection.is_idle():
            continue
        stream = getattr(getattr(connection, "_connection", None), "_network_stream", None)
        try:
            stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass  # closed meanwhile, or not connected yet


@contextmanager
def _sent(method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float):
    """Send one request through the pool and yield its response, body not yet read.

    Straight to the transport, as `httpx.Client.send` ends up doing: the client's own
    layers (auth, redirects, cookies, event hooks, default headers) do nothing for an
    upstream call and cost ~40% of its CPU. Without the client's default Accept-Encoding
    an upstream answers uncompressed; `iter_bytes` still decodes one that compresses.
    """
    request = httpx.Request(
        method,
        url,
        content=body,
        headers={"User-Agent": USER_AGENT, **headers},
        extensions={"timeout": _timeout(timeout).as_dict()},
    )
    response = transport().handle_request(request)
    response.request = request
    try:
        ensure_readable_encoding(response.headers)
        yield response
    finally:
        response.close()
        went_past_its_end(response)  # its connection is not used again if it did


# The content codings httpx decodes; it passes any other's bytes on as they came.
READABLE_ENCODINGS = frozenset({"identity", "gzip", "deflate"})


class UnreadableEncoding(Exception):
    """The answer is in a compression ReqRun cannot decode (br, zstd…): not read at all."""


def ensure_readable_encoding(headers: httpx.Headers) -> None:
    codings = {coding.strip().lower() for coding in headers.get("content-encoding", "").split(",")}
    if codings - READABLE_ENCODINGS - {""}:
        raise UnreadableEncoding("the answer's Content-Encoding names a coding httpx cannot decode")


class PastItsEnd(Exception):
    """The upstream sent more than its Content-Length said: the answer as framed is cut."""


def went_past_its_end(response: httpx.Response) -> bool:
    """Whether the upstream sent bytes past the end of `response` (a Content-Length shorter
    than the body that followed it). The answer read is then cut short, and the connection
    is closed, lest the next call on it read those bytes as the start of its own answer.

    Only h11 knows: it stops at the length and keeps the rest in its buffer. httpx has no
    public way to it; this is the connection as httpcore 1.x keeps it (pyproject holds
    httpcore to 1.x, and a test fails if the path moves, rather than this finding nothing).
    """
    state = getattr(_connection(response), "_h11_state", None)
    if state is None or not state.trailing_data[0]:
        return False
    close_connection(response)
    return True


def _connection(response: httpx.Response):
    """The connection `response` came on, as httpcore 1.x keeps it (None if that moved)."""
    stream = getattr(getattr(response.stream, "_httpcore_stream", None), "_stream", None)
    return getattr(stream, "_connection", None)


def close_connection(response: httpx.Response) -> None:
    """Close the connection `response` came on, so that the pool never hands it out again."""
    connection = _connection(response)
    if connection is not None:
        connection.close()


def endpoint_url(base_url: str, endpoint: str) -> str:
    """`https://api.openai.com/v1` + `/v1/chat/completions` → `…/v1/chat/completions`."""
    return base_url.rstrip("/") + upstream_path(endpoint)


def forwarded_headers(headers: httpx.Headers) -> dict[str, str]:
    """The upstream's headers a caller gets (and a replay, and a stream's readers).

    Only what reaches every client as the upstream sent it: a header past the bounds above,
    holding a character no server may send, or a byte outside ASCII (which httpx guesses an
    encoding for and Django writes out again as latin-1 or MIME-encoded: another value) is
    dropped, never cut or re-encoded (a cut value would lie), as is one sent twice with two
    values (the same value twice is relayed once). One warning names what was dropped, by
    name and size, never by value.
    """
    kept, dropped, total = {}, [], 0
    seen: dict[str, bytes] = {}
    for raw_name, raw_value in headers.raw:
        name = raw_name.decode("ascii", "replace").lower()
        if not (name in FORWARDED_RESPONSE_HEADERS or name.startswith(FORWARDED_RESPONSE_PREFIXES)):
            continue
        if name in seen:
            if raw_value != seen[name] and kept.pop(name, None) is not None:
                dropped.append(f"{name[:64]} (sent twice)")
            continue
        seen[name] = raw_value
        size = len(raw_name) + len(raw_value)
        # The answer's type is never crowded out by headers the upstream sent before it.
        budget = 0 if name == "content-type" else size
        value = raw_value.decode("latin-1")
        if (
            size > MAX_FORWARDED_HEADER_BYTES
            or total + budget > MAX_FORWARDED_HEADERS_BYTES
            or not raw_value.isascii()
            or UNSENDABLE_IN_HEADER.search(value)
        ):
            dropped.append(f"{name[:64]} ({size} bytes)")
            continue
        kept[name] = value
        total += budget
    if dropped:
        logger.warning(
            "upstream headers dropped",
            extra={"headers": ", ".join(dropped[:10]), "count": len(dropped)},
        )
    return kept


UPSTREAM_HEADER = "ReqRun-Upstream"


def with_upstream_header(headers: dict[str, str], upstream_name: str | None) -> dict[str, str]:
    """The headers a caller gets with an upstream's answer, naming the upstream that gave it."""
    return {**headers, UPSTREAM_HEADER: upstream_name} if upstream_name else dict(headers)


class ResponseTooLarge(Exception):
    """The answer passed REQRUN_MAX_RESPONSE_BYTES; it is neither kept nor relayed."""


def _headers(provider_key: str, body: bytes | None, accept: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {provider_key}", "Accept": accept}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return headers


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT_SECONDS))


def call(
    *, method: str, url: str, provider_key: str, body: bytes | None, timeout: float
) -> AttemptResult:
    """One call, its answer read whole (`read_answer`) and judged (`classify`); never raises."""
    deadline = time.monotonic() + timeout
    try:
        with _sent(
            method,
            url,
            headers=_headers(provider_key, body, "application/json"),
            body=body,
            timeout=timeout,
        ) as response:
            result = classify(answer=read_answer(response, deadline=deadline))
            if result.error_code == "response_incomplete":
                # Cut where its framing ended: the rest may still be on its way, and the next
                # call on this connection would read it as the start of its own answer.
                close_connection(response)
            return result
    except Exception as error:  # noqa: BLE001 - classify() records it as an outcome
        return classify(error=error)


def read_answer(response: httpx.Response, *, deadline: float) -> UpstreamResponse:
    """The whole answer, read by `deadline` (a `time.monotonic()`) and at most
    REQRUN_MAX_RESPONSE_BYTES: a plain call's, or a streamed call's that turned out not to
    be a stream (an error status).

    httpx's timeouts bound each read, so an upstream trickling a byte at a time could hold
    an attempt far past its timeout (and its lease); the whole answer is held to it here.
    """
    chunks, size, limit = [], 0, settings.REQRUN_MAX_RESPONSE_BYTES
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"more than {limit} bytes")
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout(
                "the answer did not finish within the attempt timeout", request=response.request
            )
        chunks.append(chunk)
    if went_past_its_end(response):
        raise PastItsEnd("the upstream sent more than its Content-Length")
    return UpstreamResponse(
        status_code=response.status_code,
        headers=forwarded_headers(response.headers),
        body=b"".join(chunks),
        all_headers=response.headers,
    )


@contextmanager
def open_stream(*, url: str, provider_key: str, body: bytes, timeout: float):
    """A streamed call; `timeout` also bounds the silence between two chunks."""
    with _sent(
        "POST",
        url,
        headers=_headers(provider_key, body, "text/event-stream"),
        body=body,
        timeout=timeout,
    ) as response:
        yield response


def is_http_status(status_code: int) -> bool:
    """httpx takes any three digits from an upstream; HTTP (and Django) only 100–599."""
    return 100 <= status_code <= 599


CHECK_BASE_URL = (
    "Check the project's upstream base URL: its scheme (https), its host, and that it ends "
    "where the API's paths begin (usually /v1)."
)
SHOWN_LOCATION_CHARS = 200
IN_AN_UNREADABLE_ENCODING = (
    "The upstream answered in a compression ReqRun cannot read: its Content-Encoding header "
    "names a coding other than gzip or deflate (br or zstd, say). It was not retried, as the "
    "same would come again. Check the project's upstream base URL and any proxy in front of "
    "the provider that compresses answers."
)
PAST_ITS_CONTENT_LENGTH = (
    "The upstream's answer was cut short: it sent more bytes than its Content-Length header "
    "said, so the answer that header framed is incomplete. It was neither kept nor relayed."
)
CUT_OFF = (
    "The upstream's answer was cut off: it ended, where its Content-Length, its chunks or its "
    "connection's close said, before the JSON it had begun was whole. It was neither kept nor "
    "relayed."
)
NOT_IN_ITS_ENCODING = (
    "The upstream's answer was not in the compression its Content-Encoding header named, so "
    "it could not be read; it was not retried, as the same bytes would come again. Check the "
    "project's upstream base URL and any proxy in front of the provider that rewrites answers."
)


def redirect_target(location: str) -> str | None:
    """Where a `Location` points, as a caller may be shown it: scheme, host, port and path,
    never credentials or the query (a signed URL's signature). A relative one is its path."""
    try:
        parts = urlsplit(location.strip())
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return None
    if parts.scheme and parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
    else:
        shown = parts.path
    return storable(shown)[:SHOWN_LOCATION_CHARS] or None


# The 3xx statuses that send a client elsewhere (RFC 9110 15.4). 304 answers a conditional
# request, which ReqRun never makes; 305 and 306 are retired; the rest are unassigned.
REDIRECT_STATUSES = frozenset({300, 301, 302, 303, 307, 308})


def redirected(status_code: int, headers: httpx.Headers) -> AttemptResult:
    """A 3xx: ReqRun follows no redirect (the provider key would go where it points), and
    the same URL would be redirected again, so it is not retried; the caller is told where it
    pointed, so that the base URL can be put right. Any other 3xx (a 304, say) carries no
    answer a client could read, and is said, and recorded, to be what it is: not a redirect
    (`upstream_unexpected_status`)."""
    if status_code == 304:
        message = (
            "The upstream answered 304 Not Modified, the answer to a conditional request, "
            "which ReqRun never makes; it has no body a client could read, and it was not "
            f"retried, as the same would come again. {CHECK_BASE_URL}"
        )
    elif status_code not in REDIRECT_STATUSES:
        message = (
            f"The upstream answered with HTTP status {status_code}: a 3xx, but not a "
            "redirect, and with no answer a client could read; it was not retried, as the "
            f"same would come again. {CHECK_BASE_URL}"
        )
    else:
        where = redirect_target(headers.get("location", ""))
        message = (
            f"The upstream answered with a redirect ({status_code}) "
            f"{f'to {where}' if where else 'without saying where'}, which ReqRun does not "
            f"follow. {CHECK_BASE_URL}"
        )
    return AttemptResult(
        Attempt.Outcome.FATAL_ERROR,
        status_code=status_code,
        error_code="upstream_redirected"
        if status_code in REDIRECT_STATUSES
        else "upstream_unexpected_status",
        message=message,
    )


# How every answer ReqRun proxies begins (a byte order mark and whitespace allowed; some
# upstreams send whitespace while they work): as a JSON object. Only the start is read.
JSON_OBJECT_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*\{")
MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,60}/[a-z0-9!#$&^_.+-]{1,60}")


def not_json(answer: UpstreamResponse) -> AttemptResult:
    """A plain call's 2xx that is no JSON object: a captive proxy's login page, an empty
    body, an event stream sent although `stream` was not asked for. Not a success (the
    caller's client could not read it) and not retried (the same would come again); the
    message names what came, by type and size, never its content."""
    media_type = answer.all_headers.get("content-type", "").split(";")[0].strip().lower()
    cause = "a proxy's login page or a base URL that points at a website are the usual causes"
    if not answer.body:
        what = "an empty body"
    elif media_type == "text/event-stream":
        what = "an event stream although the call did not ask for `stream: true`"
        cause = "the upstream, or a proxy in front of it, streams every answer"
    elif MEDIA_TYPE.fullmatch(media_type):
        what = f"a {media_type} body of {len(answer.body):,} bytes"
    else:
        what = f"a body of {len(answer.body):,} bytes and no readable Content-Type"
    return AttemptResult(
        Attempt.Outcome.FATAL_ERROR,
        status_code=answer.status_code,
        error_code="upstream_not_json",
        message=f"The upstream answered {answer.status_code} with {what}, not the JSON of an "
        f"OpenAI-compatible API; {cause}. {CHECK_BASE_URL}",
    )


def classify(
    *, answer: UpstreamResponse | None = None, error: BaseException | None = None
) -> AttemptResult:
    """Any answer or exception of one attempt as its recorded result; never raises.

    2xx is a success if it is one whole JSON object: one that does not begin as JSON is not
    an API's answer (`not_json`), one that begins so but does not parse whole was cut off
    wherever its framing ended it (a Content-Length shorter than the body, whose rest came
    in a later TCP segment, leaves nothing else to see), and is retried; a stream's 2xx is
    the relay's to judge, stream_attempt.py. A redirect, or any other 3xx, fails
    (`redirected`); the retryable statuses and transport faults may be retried; anything
    else, including an exception nobody foresaw, ends the attempt as a fatal or internal
    error rather than leaving it running until its lease runs out.
    """
    if error is not None:
        if isinstance(error, UpstreamNotAllowed):
            return AttemptResult(Attempt.Outcome.FATAL_ERROR, error_code="upstream_not_allowed")
        if isinstance(error, ResponseTooLarge):
            return AttemptResult(
                Attempt.Outcome.FATAL_ERROR, error_code="upstream_response_too_large"
            )
        if isinstance(error, httpx.TimeoutException):
            return AttemptResult(Attempt.Outcome.TIMEOUT, error_code="timeout")
        if isinstance(error, PastItsEnd):
            return AttemptResult(
                Attempt.Outcome.CONNECTION_ERROR,
                error_code="response_incomplete",
                message=PAST_ITS_CONTENT_LENGTH,
            )
        if isinstance(error, UnreadableEncoding):
            return AttemptResult(
                Attempt.Outcome.FATAL_ERROR,
                error_code="invalid_content_encoding",
                message=IN_AN_UNREADABLE_ENCODING,
            )
        if isinstance(error, httpx.DecodingError):
            # The body is not in the Content-Encoding its headers name: the same bytes would
            # come again, so retrying would only spend the caller's attempts and time.
            return AttemptResult(
                Attempt.Outcome.FATAL_ERROR,
                error_code="invalid_content_encoding",
                message=NOT_IN_ITS_ENCODING,
            )
        if isinstance(error, httpx.RequestError | httpx.InvalidURL | httpx.StreamError):
            return AttemptResult(
                Attempt.Outcome.CONNECTION_ERROR, error_code=type(error).__name__.lower()[:64]
            )
        if isinstance(error, redis.RedisError):
            # Redis (the stream relay, the slots) went away mid-attempt: worth another try.
            return AttemptResult(Attempt.Outcome.CONNECTION_ERROR, error_code="redis_unavailable")
        # A fault of ours is not retried (it would only repeat). Only the exception's type is
        # logged: its message may quote the payload.
        logger.error("attempt raised", extra={"exception": type(error).__name__})
        return AttemptResult(Attempt.Outcome.FATAL_ERROR, error_code="internal_error")
    assert answer is not None
    if not is_http_status(answer.status_code):  # neither stored nor relayed: no client takes it
        return AttemptResult(
            Attempt.Outcome.FATAL_ERROR,
            status_code=answer.status_code,
            error_code="invalid_status",
            message=f"The upstream answered with HTTP status {answer.status_code}, outside "
            "100–599, which is not a valid answer; it is neither stored nor relayed.",
        )
    if 300 <= answer.status_code < 400:
        return redirected(answer.status_code, answer.all_headers)
    retry_after = retry_policy.retry_after_ms(answer.all_headers)
    if 200 <= answer.status_code < 300:
        if not JSON_OBJECT_START.match(answer.body):
            return not_json(answer)
        try:
            # The one parse of the answer: it shows the answer whole and gives its usage.
            usage = normalise_usage(parse_json(answer.body).get("usage"))
        except NestedTooDeeply:
            usage = None  # whole or not, the parser cannot tell: relayed as it came
        except ValueError:
            return AttemptResult(
                Attempt.Outcome.CONNECTION_ERROR,
                status_code=answer.status_code,
                error_code="response_incomplete",
                message=CUT_OFF,
            )
        return AttemptResult(
            Attempt.Outcome.SUCCESS,
            status_code=answer.status_code,
            retry_after_ms=retry_after,
            response=answer,
            usage=usage,
        )
    retryable = retry_policy.is_retryable_status(answer.status_code, answer.body)
    return AttemptResult(
        Attempt.Outcome.RETRYABLE_ERROR if retryable else Attempt.Outcome.FATAL_ERROR,
        status_code=answer.status_code,
        error_code=retry_policy.error_code_of(answer.body),
        retry_after_ms=retry_after,
        response=answer,
    )
