"""Every `error.code` ReqRun itself answers with, what it means and what the caller should do.

The errors page of the docs and the OpenAPI schema are both built from this list; a test
checks that every code raised in `requests_app` appears here.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    type: str
    meaning: str
    action: str
    retry: bool = False


ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode(
        "invalid_api_key",
        401,
        "invalid_request_error",
        "No `Authorization: Bearer rr_…` header, or the key is unknown or revoked.",
        "Use an active ReqRun key from the project's API keys page (not your provider key).",
    ),
    ErrorCode(
        "too_many_auth_failures",
        429,
        "requests",
        "Too many calls with invalid keys from this address or for this key prefix.",
        "Fix the key, then retry after the `Retry-After` seconds.",
        retry=True,
    ),
    ErrorCode(
        "account_suspended",
        403,
        "permission_error",
        "An operator suspended the account; the dashboard shows the reason.",
        "Contact support@reqrun.com. Retrying does not help.",
    ),
    ErrorCode(
        "project_suspended",
        403,
        "permission_error",
        "An operator suspended this project; other projects keep working.",
        "Contact support@reqrun.com. Retrying does not help.",
    ),
    ErrorCode(
        "not_found",
        404,
        "invalid_request_error",
        "No such path, or no request with that id in the key's project.",
        "Check the URL and that the key belongs to the project that made the request.",
    ),
    ErrorCode(
        "method_not_allowed",
        405,
        "invalid_request_error",
        "The path exists but not for this HTTP method.",
        "See the API reference for the methods each path takes.",
    ),
    ErrorCode(
        "request_too_large",
        413,
        "invalid_request_error",
        "The body is larger than ReqRun accepts: 10 MiB (10,485,760 bytes) unless the operator "
        "set `REQRUN_MAX_BODY_BYTES`; the message gives the limit.",
        "Send a smaller body.",
    ),
    ErrorCode(
        "unsupported_content_encoding",
        415,
        "invalid_request_error",
        "The body came with a `Content-Encoding` (gzip, br, zstd…): ReqRun reads request "
        "bodies uncompressed only.",
        "Send the body uncompressed, without a `Content-Encoding` header.",
    ),
    ErrorCode(
        "invalid_json",
        400,
        "invalid_request_error",
        "The body is not valid JSON in UTF-8 (`NaN` and `Infinity` are not JSON numbers "
        "either, and UTF-16 or UTF-32 text is refused).",
        "Send a JSON object; check the encoding and quoting, and that every number is finite.",
    ),
    ErrorCode(
        "invalid_stream",
        400,
        "invalid_request_error",
        "`stream` is present but is not `true` or `false`.",
        "Send a boolean, or leave `stream` out.",
    ),
    ErrorCode(
        "invalid_body",
        400,
        "invalid_request_error",
        "The body is valid JSON but not an object (an array, a string…).",
        "Send a JSON object, as the OpenAI API expects.",
    ),
    ErrorCode(
        "stream_not_supported",
        400,
        "invalid_request_error",
        "`stream: true` on an endpoint that cannot stream (embeddings, images, moderations).",
        "Drop `stream`.",
    ),
    ErrorCode(
        "stream_with_async",
        400,
        "invalid_request_error",
        "`stream: true` together with `Prefer: respond-async` or `ReqRun-Wait: 0`.",
        "Stream in wait mode, or run async without `stream` and poll for the result.",
    ),
    ErrorCode(
        "invalid_idempotency_key",
        400,
        "invalid_request_error",
        "The `Idempotency-Key` header is empty or longer than 255 characters, or was sent "
        "more than once.",
        "Send it once, with 1 to 255 characters, e.g. a UUID per logical operation.",
    ),
    ErrorCode(
        "invalid_wait",
        400,
        "invalid_request_error",
        "`ReqRun-Wait` is not a whole number of seconds from 0 to 600, or was sent more than once.",
        "Send it once, a whole number from 0 (async) to 600.",
    ),
    ErrorCode(
        "provider_key_missing",
        400,
        "invalid_request_error",
        "The project has no provider key, so ReqRun cannot call the upstream. (If the key "
        "is removed while a request waits, that request fails with 502 `upstream_error`.)",
        "Add the provider key in the project's settings.",
    ),
    ErrorCode(
        "idempotency_key_reused",
        422,
        "invalid_request_error",
        "This `Idempotency-Key` was used in the last 24 hours with a different body or endpoint.",
        "Use a new key for a different request; reuse a key only to retry the same call.",
    ),
    ErrorCode(
        "rate_limit_exceeded",
        429,
        "requests",
        "The account sent more requests this minute than its plan's rate limit (all its "
        "projects and keys together). The upstream's own 429s are returned unchanged with "
        "their own codes.",
        "Wait `Retry-After` seconds; watch `ReqRun-RateLimit-Remaining`. The OpenAI SDKs "
        "retry this for you.",
        retry=True,
    ),
    ErrorCode(
        "pending_queue_full",
        429,
        "requests",
        "The account has as many requests queued or running as its plan's pending cap.",
        "Retry after `Retry-After` seconds, when some have finished; or upgrade.",
        retry=True,
    ),
    ErrorCode(
        "monthly_quota_exceeded",
        429,
        "insufficient_quota",
        "The account has used this month's accepted requests (`x-should-retry: false`).",
        "Upgrade the plan, or wait for the quota to reset on the 1st of the month at 00:00 UTC "
        "(the message gives the date); retrying before then does not help.",
    ),
    ErrorCode(
        "request_already_finished",
        409,
        "invalid_request_error",
        "Cancel was called on a request that had already finished; the body carries the "
        "unchanged request object.",
        "Nothing to do: read the request's final status.",
    ),
    ErrorCode(
        "request_canceled",
        409,
        "invalid_request_error",
        "The request was canceled (from the API, the dashboard, or because a streaming client "
        "went away) before it finished.",
        "Send it again, with a new Idempotency-Key if you use one.",
    ),
    ErrorCode(
        "response_not_retained",
        410,
        "invalid_request_error",
        "The request finished but its response body is gone: kept 24 hours, or not kept past "
        "delivery with zero retention. Status and usage remain. Also when the stored body "
        "can no longer be decrypted (its encryption key was removed from ReqRun's key ring); "
        "the message then says so.",
        "Store results on your side when you receive them.",
    ),
    ErrorCode(
        "timeout",
        504,
        "upstream_error",
        "Every attempt timed out waiting for the upstream.",
        "Raise the project's per-attempt timeout, or retry later.",
        retry=True,
    ),
    ErrorCode(
        "deadline_exceeded",
        504,
        "upstream_error",
        "The project's overall deadline passed before an attempt succeeded (request `expired`) "
        "and its last attempt got no answer; if it got one (a 503), that answer is returned.",
        "Raise the deadline in the project's settings, or retry later.",
        retry=True,
    ),
    ErrorCode(
        "upstream_not_allowed",
        502,
        "upstream_error",
        "The upstream base URL resolves to a private, loopback or link-local address.",
        "Use a public https upstream URL.",
    ),
    ErrorCode(
        "upstream_response_too_large",
        502,
        "upstream_error",
        "The upstream's answer was larger than 64 MiB. It is neither stored nor relayed, and "
        "the call is not retried.",
        "Ask for a smaller answer (fewer choices, a lower `max_tokens`, fewer images).",
    ),
    ErrorCode(
        "invalid_content_encoding",
        502,
        "upstream_error",
        "The upstream's answer was not in the `Content-Encoding` its headers named (a body "
        "marked gzip that is not), or was in one ReqRun cannot decode (anything but gzip and "
        "deflate: br, zstd…), so it could not be read. The call is not retried: the same "
        "bytes would come again.",
        "Check the upstream URL, and any proxy in front of the provider that rewrites answers.",
    ),
    ErrorCode(
        "invalid_status",
        502,
        "upstream_error",
        "The upstream answered with an HTTP status outside 100–599. No HTTP client accepts "
        "one, so the answer is neither stored nor relayed, and the call is not retried.",
        "Check that the project's upstream URL points at an OpenAI-compatible API.",
    ),
    ErrorCode(
        "upstream_redirected",
        502,
        "upstream_error",
        "The upstream answered with a redirect (3xx). ReqRun follows none (your provider key "
        "would go wherever it points) and does not retry: the same URL would be redirected "
        "again. The message says where it pointed (scheme, host and path; never the query), "
        "or that it did not say.",
        "Correct the project's upstream base URL: `https` rather than `http`, the right host, "
        "and the path the API's routes start from (usually ending in `/v1`). With a fallback "
        "upstream, ticking “Answers no client can read” in the project's failover policy "
        "sends such calls on to it meanwhile.",
    ),
    ErrorCode(
        "upstream_unexpected_status",
        502,
        "upstream_error",
        "The upstream answered with a 3xx that is not a redirect: a 304 Not Modified (the "
        "answer to a conditional request, which ReqRun never makes), a retired 305 or 306, or "
        "an unassigned code. It carries no answer a client could read, so it is neither "
        "stored nor relayed, and the call is not retried: the same would come again. The "
        "message names the status.",
        "Check that the project's upstream base URL points at the API itself (usually ending "
        "in `/v1`), and what any proxy or cache in front of it answers. With a fallback "
        "upstream, ticking “Answers no client can read” in the project's failover policy "
        "sends such calls on to it meanwhile.",
    ),
    ErrorCode(
        "upstream_not_json",
        502,
        "upstream_error",
        "The upstream answered a call without `stream: true` with a 2xx that is not a JSON "
        "object: an HTML page (often a proxy's or captive portal's login page), an empty "
        "body, or an event stream. No client could read it as the API's answer, so it is "
        "neither stored nor relayed, and the call is not retried. The message names its type "
        "and size.",
        "Check that the project's upstream base URL points at the API itself (usually ending "
        "in `/v1`), not a website, and what any proxy in front of it answers. With a fallback "
        "upstream, ticking “Answers no client can read” in the project's failover policy "
        "sends such calls on to it meanwhile.",
    ),
    ErrorCode(
        "upstream_unreachable",
        502,
        "upstream_error",
        "`GET /v1/models` could not reach the upstream.",
        "Check the project's upstream URL; retry later.",
        retry=True,
    ),
    ErrorCode(
        "connecterror",
        502,
        "upstream_error",
        "No attempt could connect to the upstream. The code names the last transport error "
        "(`connecterror`, `readerror`, `remoteprotocolerror`, `worker_lost`, …; "
        "`response_incomplete` when a 2xx's JSON was not whole where its Content-Length, its "
        "chunks or the connection's close ended it, or an answer sent more bytes than its "
        "Content-Length said).",
        "Check the upstream URL and the provider's status; retry later.",
        retry=True,
    ),
    ErrorCode(
        "stream_interrupted",
        200,
        "upstream_error",
        "Sent as an SSE `event: error` when a stream broke after it started (also "
        "`stream_incomplete`, `timeout`; `stream_stalled` when nothing came for longer than an "
        "attempt may stay silent; `upstream_stream_error` when the upstream itself sent an "
        "error inside its stream, relayed as it came). The request is `failed` with "
        "`partial: true`; no `[DONE]` of ReqRun's follows.",
        "Discard the partial answer and send the request again.",
        retry=True,
    ),
    ErrorCode(
        "server_restarting",
        200,
        "server_error",
        "Sent as an SSE `event: error` when the ReqRun server relaying a stream restarts (a "
        "deploy). The request itself goes on in a worker; waiting callers of that server get "
        "their `202` instead.",
        "Read the request's result at `/v1/requests/{id}` (the message names it).",
        retry=True,
    ),
    ErrorCode(
        "service_unavailable",
        503,
        "server_error",
        "ReqRun's own database or Redis could not be reached (an outage on ReqRun's side), so "
        "the call could not be recorded or read. A waiting caller whose request was already "
        "recorded gets its `202` instead.",
        "Retry after the `Retry-After` seconds (the OpenAI SDKs do); with an `Idempotency-Key` "
        "a retry never runs the request twice.",
        retry=True,
    ),
    ErrorCode(
        "encryption_key_missing",
        503,
        "server_error",
        "ReqRun cannot decrypt what the call needs, the project's provider key or the "
        "request's stored body: the encryption key it was stored under has been removed from "
        "ReqRun's key ring (`REQRUN_ENCRYPTION_KEYS`). The request fails without reaching the "
        "upstream; the message says which was unreadable. Sent as an SSE `event: error` when "
        "the stream being relayed cannot be decrypted (a web and a worker with different "
        "keys): the request fails, `partial`.",
        "Operators: put the removed key back in `REQRUN_ENCRYPTION_KEYS` (after the new "
        "primary) and restart. Customers: entering the provider key again in the project's "
        "settings stores it under the current key; then send the request again.",
    ),
    ErrorCode(
        "internal_error",
        500,
        "server_error",
        "A bug in ReqRun. It has been logged.",
        "Retry; if it persists, write to support@reqrun.com with the `ReqRun-Request-Id`.",
        retry=True,
    ),
)

# Codes an attempt or a stream can end with, covered by a catalogue entry above.
TRANSPORT_CODES = (
    "connecterror",
    "readerror",
    "writeerror",
    "remoteprotocolerror",
    "localprotocolerror",
    "readtimeout",
    "connecttimeout",
    "worker_lost",
    "stream_incomplete",
    "response_incomplete",
    "stream_stalled",
    "upstream_stream_error",
    "invalid_event_stream",
    "client_disconnected",
    "lease_lost",
    "redis_unavailable",
)


_BY_CODE = {entry.code: entry for entry in ERROR_CODES}


def catalogue_entry(code: str | None) -> ErrorCode | None:
    return _BY_CODE.get(code) if code else None


def status_of(code: str | None, default: int = 502) -> int:
    """The HTTP status ReqRun answers with for `code` (the catalogue is the one table)."""
    entry = catalogue_entry(code)
    return entry.status if entry else default


def error_object(code: str, message: str | None = None) -> dict:
    """An OpenAI-style error object for a catalogued code, in the catalogue's own words."""
    entry = catalogue_entry(code)
    if entry is None:
        return {"message": message or code, "type": "upstream_error", "param": None, "code": code}
    return {"message": message or entry.meaning, "type": entry.type, "param": None, "code": code}
