"""The /v1 API: OpenAI-compatible proxied endpoints, request status, usage.

Views are async (adrf) so a caller waiting for its result costs a coroutine, not a
thread. Each view does its database work in one hop to a thread pool (`in_thread`) —
authentication included — rather than through DRF's per-step hops.
"""

import asyncio
from inspect import iscoroutinefunction
from urllib.parse import quote

from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from django.template.defaultfilters import pluralize
from django.template.response import SimpleTemplateResponse
from drf_spectacular.utils import extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from core.endpoints import STREAMING_ENDPOINTS
from core.ids import new_public_id
from core.untrusted import parse_json, whole_number
from projects.limits import limits_for
from projects.models import ApiKey
from projects.selectors import first_upstream_with_provider_key
from projects.upstreams import provider_key_of
from requests_app import metrics
from requests_app.api import ratelimit, selectors
from requests_app.api.authentication import authenticate
from requests_app.api.responses import (
    answer_accepted,
    answer_has_body,
    deliver,
    deliver_final_response,
    in_thread,
    load_request,
    release_if_owed,
    wait_until_finished,
)
from requests_app.api.serializers import request_object
from requests_app.api.stream_relay import relay_stream
from requests_app.engine import accept, cancel, retention, upstream
from requests_app.engine.executor import UNREADABLE_PROVIDER_KEY
from requests_app.engine.notifications import hub
from requests_app.errors import (
    Conflict,
    EncryptionKeyMissing,
    InvalidRequest,
    NotFound,
    RateLimited,
    UpstreamError,
    body_too_large,
    envelope,
)
from requests_app.models import Request

DEFAULT_WAIT_SECONDS = 300
MAX_WAIT_SECONDS = 600
MAX_POLL_WAIT_SECONDS = 60


class V1View(APIView):
    """Base for /v1: our own auth hop, OpenAI error envelope, ReqRun rate-limit headers,
    `Cache-Control: no-store` on every answer."""

    authentication_classes = ()
    permission_classes = ()
    metadata_class = None  # OPTIONS is a 405 like any method a path does not serve
    rate_state: ratelimit.RateLimitState | None = None
    json_renderer = JSONRenderer()

    @property
    def allowed_methods(self):
        """What `Allow` offers: OPTIONS is answered 405 like any method a path does not serve."""
        return [method for method in super().allowed_methods if method != "OPTIONS"]

    @property
    def default_response_headers(self):
        headers = super().default_response_headers
        if not self.allowed_methods:  # no such endpoint: nothing to offer instead
            del headers["Allow"]
        return headers

    def perform_content_negotiation(self, request, force=False):
        """JSON whatever the Accept header asks for, as the OpenAI API answers; DRF's
        negotiation on every call cost more than the rest of its set-up."""
        return self.json_renderer, self.json_renderer.media_type

    async def async_dispatch(self, request, *args, **kwargs):
        """adrf's dispatch, with DRF's `initial` run on the loop instead of through
        `sync_to_async`: for these views it only fixes the renderer and finds no
        authentication, permission or throttle class to run (authentication is our own
        hop), so the hop bought nothing and queued every call behind the process-wide
        sync thread."""
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            self.initial(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            handler = handler or self.http_method_not_allowed
            if iscoroutinefunction(handler):
                response = await handler(request, *args, **kwargs)
            else:  # OPTIONS, or a method the view does not serve
                response = await sync_to_async(handler)(request, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - DRF's own rule: every error is a response
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return rendered_here(self.response)

    def authenticate_and_peek(self, request) -> ApiKey:
        api_key, self.rate_state = authenticate(request.META, rate="peek")
        return api_key

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # Answers, request objects and errors alike: no browser or proxy keeps a copy.
        response["Cache-Control"] = "no-store"
        if self.rate_state is not None:
            for name, value in self.rate_state.headers().items():
                response[name] = value
        return response


def rendered_here(response: HttpResponse) -> HttpResponse:
    """DRF's Response rendered on the loop and handed on as a plain HttpResponse. Django
    renders any response that has a `render` method through a hop to its one
    thread-sensitive thread (`BaseHandler._get_response_async`), which queued every 202 and
    every error behind the other calls' hops; rendering JSON needs no thread."""
    if not isinstance(response, SimpleTemplateResponse):
        return response
    response.render()
    plain = HttpResponse(response.content, status=response.status_code, headers=response.headers)
    plain._has_been_logged = getattr(response, "_has_been_logged", False)
    return plain


def prefers_async(prefer: str) -> bool:
    """Whether a Prefer header holds the respond-async preference: comma-separated
    preferences, each a name (case-insensitive) with optional `=value` and `;` parameters."""
    return any(
        preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async"
        for preference in prefer.split(",")
    )


def single_header(request, name: str, *, code: str) -> str | None:
    """The value of a header that takes one value. Sent twice, it is refused: the server
    joins a repeated header's values with a comma ("a,b"), a value the caller never sent.
    Only the ASGI scope still lists each one (names in lower case)."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        raw_name = name.lower().encode()
        if sum(header == raw_name for header, _ in scope["headers"]) > 1:
            raise InvalidRequest(
                f"The {name} header must be sent once; this request sent it more than once.",
                param=name,
                code=code,
            )
    return request.META.get("HTTP_" + name.upper().replace("-", "_"))


def parse_wait_budget(request) -> int:
    """Seconds to hold the call; 0 is async mode. A malformed ReqRun-Wait is refused even
    beside `Prefer: respond-async`: the caller meant something by it."""
    raw = single_header(request, "ReqRun-Wait", code="invalid_wait")
    seconds = DEFAULT_WAIT_SECONDS
    if raw is not None:
        seconds = whole_number(raw, minimum=0, maximum=MAX_WAIT_SECONDS)
        if seconds is None:
            raise InvalidRequest(
                f"ReqRun-Wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}.",
                param="ReqRun-Wait",
                code="invalid_wait",
            )
    # Prefer is a list: repeated Prefer headers joined by a comma are one list, as HTTP allows.
    return 0 if prefers_async(request.META.get("HTTP_PREFER", "")) else seconds


def parse_idempotency_key(request) -> str | None:
    raw = single_header(request, "Idempotency-Key", code="invalid_idempotency_key")
    if raw is None:
        return None
    try:
        # The server hands header bytes over as latin-1; a client's key is UTF-8 text.
        key = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        key = None
    if key is None or not 1 <= len(key) <= 255 or "\x00" in key:
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 characters of UTF-8 text.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return key


def ensure_body_size(length: int) -> None:
    if length > settings.REQRUN_MAX_BODY_BYTES:
        raise body_too_large()


def ensure_uncompressed(content_encoding: str) -> None:
    if is_compressed(content_encoding):
        raise InvalidRequest(
            "The request body came with a Content-Encoding: ReqRun reads request bodies "
            "uncompressed only. Send it without compression and without that header.",
            param="Content-Encoding",
            code="unsupported_content_encoding",
        )


def is_compressed(content_encoding: str) -> bool:
    return content_encoding.strip().lower() not in ("", "identity")


def parse_body(raw: bytes) -> dict:
    try:
        # Python's parser also takes NaN and Infinity, and UTF-16 or -32 text: JSON has no
        # such numbers and is UTF-8 between systems (RFC 8259), so the upstream's parser
        # could refuse such a body after it was accepted and counted. (A UTF-8 byte order
        # mark is let through, as RFC 8259 allows.)
        payload = parse_json(raw.decode("utf-8-sig"), allow_nan=False)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(
            "The request body is not valid JSON in UTF-8 (or is nested too deeply to parse). "
            "Send a JSON object, encoded as UTF-8, with 'Content-Type: application/json'.",
            code="invalid_json",
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    return payload


class ProxyView(V1View):
    """POST to an OpenAI endpoint: record, run with retries, and wait for or return the id."""

    endpoint = ""

    def accept(self, request, body: bytes, public_id: str):
        # A call without a key is counted against the rate limit in the same Redis round trip
        # as the authentication's check; a keyed one may be a retry, which is not counted.
        keyed = "HTTP_IDEMPOTENCY_KEY" in request.META
        api_key, self.rate_state = authenticate(request.META, rate=None if keyed else "hit")
        limits = limits_for(api_key.project.account, preloaded=True)
        try:
            idempotency_key = parse_idempotency_key(request)
        except InvalidRequest:  # refused like any bad input, with the limit's state shown
            self.rate_state = ratelimit.peek(
                account_id=api_key.project.account_id, limit=limits.requests_per_minute
            )
            raise
        if idempotency_key:  # a client retry of a known call: no limit applies to it
            repeated = accept.remembered_call(
                api_key=api_key, endpoint=self.endpoint, body=body, idempotency_key=idempotency_key
            )
            if repeated is not None:
                self.rate_state = ratelimit.peek(
                    account_id=api_key.project.account_id, limit=limits.requests_per_minute
                )
                return repeated_call(repeated, api_key.project, parse_wait_budget(request))
        if self.rate_state is None:
            self.rate_state = ratelimit.hit(
                account_id=api_key.project.account_id, limit=limits.requests_per_minute
            )
        if not self.rate_state.allowed:
            reset = self.rate_state.reset_seconds
            raise RateLimited(
                f"Rate limit of {limits.requests_per_minute:,} requests per minute reached for "
                f"this account. Retry in {reset} second{pluralize(reset)}, when the next minute "
                "starts; higher plans allow more.",
                headers={"Retry-After": str(reset)},
            )
        ensure_body_size(len(body))
        payload = parse_body(body)
        wait_seconds = parse_wait_budget(request)
        if not isinstance(payload.get("stream", False), bool | None):  # null: false, as at OpenAI
            raise InvalidRequest(
                "'stream' must be true, false or null.", param="stream", code="invalid_stream"
            )
        if payload.get("stream"):
            if self.endpoint not in STREAMING_ENDPOINTS:
                raise InvalidRequest(
                    f"{self.endpoint} does not support stream: true.",
                    param="stream",
                    code="stream_not_supported",
                )
            if wait_seconds == 0:
                raise InvalidRequest(
                    "stream: true cannot be combined with async mode (Prefer: respond-async "
                    "or ReqRun-Wait: 0). Drop one of them.",
                    param="stream",
                    code="stream_with_async",
                )
        if not api_key.upstream_has_provider_key:  # read with the key; nothing to decrypt
            raise InvalidRequest(
                "This project has no provider key yet. Add one in the project's settings.",
                code="provider_key_missing",
            )
        accepted = accept.accept_request(
            api_key=api_key,
            endpoint=self.endpoint,
            body=body,
            payload=payload,
            idempotency_key=idempotency_key,
            limits=limits,
            public_id=public_id,
            waiting=wait_seconds > 0,
        )
        if accepted.outcome == "created":  # fresh from the insert, project already loaded
            owed = accepted.request.owed_deliveries > 0
            return accepted.outcome, accepted.request, wait_seconds, owed
        return repeated_call(accepted, api_key.project, wait_seconds)

    async def post(self, request, *args, **kwargs):
        length = request.META.get("CONTENT_LENGTH") or ""
        size = int(length) if length.isdigit() else 0
        content_encoding = request.META.get("HTTP_CONTENT_ENCODING", "")
        refused = size > settings.REQRUN_MAX_BODY_BYTES or is_compressed(content_encoding)
        body = b""
        if not refused:
            try:
                body = request.body
            except RequestDataTooBig:  # sent without a Content-Length: too large once read
                refused, size = True, settings.REQRUN_MAX_BODY_BYTES + 1
        if refused:
            # Refused before its body is used; the key is checked first, as for any call.
            await in_thread(self.authenticate_and_peek)(request)
            ensure_body_size(size)
            ensure_uncompressed(content_encoding)
        # The id is chosen here and its completion notice awaited before the request exists,
        # so no notice can be missed and the wait needs no first database read.
        public_id = new_public_id("req")
        completion_hub = await hub()
        notice = completion_hub.register(public_id)
        try:
            return await self.respond(request, body, public_id, notice)
        finally:
            completion_hub.unregister(public_id, notice)

    async def respond(self, request, body: bytes, public_id: str, notice):
        outcome, record, wait_seconds, owed = await in_thread(self.accept)(request, body, public_id)
        metrics.request_accepted(endpoint=self.endpoint, outcome=outcome)
        if record.stream and outcome != "replayed":
            return await relay_stream(record, wait_seconds, owed=owed)
        if outcome == "replayed":
            # A delivery like any other: with zero retention no copy is kept after it.
            response = await in_thread(deliver_final_response)(record, owed=owed)
            response["Idempotent-Replayed"] = "true"
            return response
        try:
            if wait_seconds and not record.is_terminal:
                record = await wait_until_finished(
                    record.pk,
                    record.public_id,
                    wait_seconds,
                    notice=notice if outcome == "created" else None,  # attached: another id
                    record=record,
                )
        except asyncio.CancelledError:  # the caller hung up
            await release_if_owed(record, owed)
            raise
        if record.is_terminal:
            return await deliver(record, owed=owed)
        await release_if_owed(record, owed)  # its 202: it fetches the answer like an async caller
        return await answer_accepted(record)


def repeated_call(accepted: accept.Accepted, project, wait_seconds: int):
    """A keyed call that repeats an earlier one: its outcome, the request as read now, the
    wait budget, and whether it is owed the answer. Read after attaching: a request that
    ended since it was found running is a replay (and says so), as it would be a moment
    later, whichever way its answer then reaches the caller."""
    owed = owed_its_answer(accepted, project, wait_seconds)
    record = load_request(accepted.request.pk)
    outcome = "replayed" if record.is_terminal else accepted.outcome
    return outcome, record, wait_seconds, owed


def owed_its_answer(accepted: accept.Accepted, project, wait_seconds: int) -> bool:
    """Zero retention: a caller attaching to a running request to wait for it is owed its
    answer, which the first caller's delivery must then not forget (a streamed one too: an
    answer that never started streaming reaches it from the record)."""
    request = accepted.request
    if accepted.outcome != "attached" or not wait_seconds:
        return False
    return project.zero_retention and retention.owe_answer(request.pk)


def proxy_view(endpoint: str):
    return ProxyView.as_view(endpoint=endpoint)


# What a path segment may hold unescaped besides letters, digits and "-._~" (RFC 3986): a
# fine-tuned model's id ("ft:gpt-4o:org:id") reaches the upstream as the caller wrote it.
PATH_SEGMENT_SAFE = ":@!$&'()*+,;="


def model_path(model_id: str) -> str:
    """The model id as a URL path, its slashes kept. A `.`, `..` or empty segment would
    make the upstream's URL another path (sent with the provider's key), so it is a 404."""
    segments = model_id.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise NotFound(f"No model {model_id!r}.", param="model")
    return "/".join(quote(segment, safe=PATH_SEGMENT_SAFE) for segment in segments)


class ModelsView(V1View):
    """GET /v1/models and /v1/models/{id}: passed straight through, not recorded or counted."""

    def fetch(self, request, model_id: str | None):
        api_key = self.authenticate_and_peek(request)
        target = first_upstream_with_provider_key(api_key.project)
        if target is None:
            raise InvalidRequest(
                "This project has no provider key yet. Add one in the project's settings.",
                code="provider_key_missing",
            )
        provider_key = provider_key_of(target)
        if provider_key is None:
            raise EncryptionKeyMissing(UNREADABLE_PROVIDER_KEY)
        path = "/v1/models" + (f"/{model_path(model_id)}" if model_id else "")
        verdict = upstream.call(
            method="GET",
            url=upstream.endpoint_url(target.base_url, path),
            provider_key=provider_key,
            body=None,
            timeout=api_key.project.attempt_timeout_seconds,
        )
        if verdict.response is None:  # no answer to pass on: unreachable, a redirect, not JSON
            # A fault's own message says more than "unreachable" where it has one.
            raise UpstreamError(
                verdict.message or "Could not reach the upstream to list models.",
                code=verdict.error_code if verdict.message else "upstream_unreachable",
            )
        answer = verdict.response
        response = HttpResponse(
            answer.body, status=answer.status_code, content_type="application/json"
        )
        for name, value in answer.headers.items():
            response[name] = value
        return response

    async def get(self, request, model_id: str | None = None):
        return await in_thread(self.fetch)(request, model_id)


class RequestListView(V1View):
    def list(self, request):
        api_key = self.authenticate_and_peek(request)
        page, has_more = selectors.list_requests(api_key.project, request.query_params)
        data = [request_object(item) for item in page]
        if answer_has_body(request):
            retention.forget_shown_responses(page)  # zero retention: shown once, then gone
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": has_more,
            }
        )

    async def get(self, request):
        return await in_thread(self.list)(request)


class RequestDetailView(V1View):
    def find(self, request, request_id: str) -> Request:
        api_key = self.authenticate_and_peek(request)
        return selectors.request_in_project(api_key.project, request_id)

    async def get(self, request, request_id: str):
        record = await in_thread(self.find)(request, request_id)
        wait = whole_number(
            request.query_params.get("wait", "0"), minimum=0, maximum=MAX_POLL_WAIT_SECONDS
        )
        if wait is None:
            raise InvalidRequest(
                f"'wait' must be a whole number of seconds from 0 to {MAX_POLL_WAIT_SECONDS}.",
                param="wait",
            )
        if wait and not record.is_terminal:
            record = await wait_until_finished(record.pk, record.public_id, wait)
        return Response(await in_thread(shown_once)(record, request))


def shown_once(record: Request, http_request) -> dict:
    """The request object; zero retention keeps an async result only until it is shown."""
    body = request_object(record)
    if answer_has_body(http_request):
        retention.forget_delivered_response(record)
    return body


class RequestCancelView(V1View):
    def cancel(self, request, request_id: str):
        record = selectors.request_in_project(
            self.authenticate_and_peek(request).project, request_id
        )
        if not cancel.cancel_request(request=record):
            record = load_request(record.pk)
            raise Conflict(
                f"Request {request_id} already finished with status '{record.status}'; "
                "there is nothing to cancel.",
                param="id",
                request_object=shown_once(record, request),
            )
        return Response(shown_once(load_request(record.pk), request))

    async def post(self, request, request_id: str):
        return await in_thread(self.cancel)(request, request_id)

    def handle_exception(self, exc):
        # A 409 carries the unchanged request object, as the API promises.
        if isinstance(exc, Conflict) and exc.request_object is not None:
            body = {
                **exc.request_object,
                **envelope(exc.message, error_type=exc.error_type, code=exc.code, param=exc.param),
            }
            return Response(body, status=exc.status_code)
        return super().handle_exception(exc)


@extend_schema(exclude=True)
class UnknownPathView(V1View):
    """Every /v1 path no endpoint serves, whatever the method."""

    def http_method_not_allowed(self, request, *args, **kwargs):
        raise NotFound(f"No such endpoint: {request.method} {request.path}.", param=None)

    def options(self, request, *args, **kwargs):
        return self.http_method_not_allowed(request)


class UsageView(V1View):
    def report(self, request):
        account = self.authenticate_and_peek(request).project.account
        return Response(selectors.usage_report(account))

    async def get(self, request):
        return await in_thread(self.report)(request)
