"""One streamed attempt: relay the upstream's SSE through Redis as it arrives.

Before the first bytes leave, a failure is an ordinary attempt outcome and may be retried.
After that, nothing is retried: a cut, a stall past the inter-chunk timeout, or a client
that went away ends the attempt, and the caller records what was delivered.
"""

import threading
import time
from datetime import timedelta

import httpx
from django.utils import timezone

from requests_app.engine import concurrency, retry_policy, upstream
from requests_app.engine.outcomes import AttemptResult
from requests_app.engine.streams import StreamPublisher
from requests_app.models import Attempt, Request, Status

SSE_FIELD_PREFIXES = (b"data:", b"event:", b"id:", b"retry:", b":")
CANCEL_CHECK_SECONDS = 0.25
LEASE_RENEW_SECONDS = 5.0


def looks_like_sse(first_line: bytes) -> bool:
    return first_line.strip() == b"" or first_line.lstrip().startswith(SSE_FIELD_PREFIXES)


def completed(endpoint: str, body: bytes) -> bool:
    """Did the upstream finish its stream properly, rather than just close the connection?"""
    if endpoint == "/v1/responses":
        return b"response.completed" in body
    return b"data: [DONE]" in body


class StreamRelay:
    def __init__(self, *, request: Request, number: int, lease: timedelta):
        self.request = request
        self.number = number
        self.lease = lease
        self.publisher = StreamPublisher(request.public_id)
        self.delivered = bytearray()
        self.started = False
        self.finished = threading.Event()
        self.client_left = False

    def _renew_lease(self) -> None:
        Request.objects.filter(
            pk=self.request.pk, attempt_count=self.number, status=Status.RUNNING
        ).update(lease_until=timezone.now() + self.lease)
        concurrency.renew(
            account_id=self.request.account_id,
            request_pk=self.request.pk,
            lease_seconds=self.lease.total_seconds(),
        )

    def _start(self, response: httpx.Response) -> None:
        self.publisher.start(response.status_code, upstream.forwarded_headers(response.headers))
        Request.objects.filter(pk=self.request.pk, attempt_count=self.number).update(
            first_byte_at=timezone.now()
        )
        self.started = True

    def result(
        self, outcome: str, *, status_code: int | None, error_code: str | None = None, **extra
    ):
        body = bytes(self.delivered)
        return AttemptResult(
            outcome,
            status_code=status_code,
            error_code=error_code,
            response=upstream.UpstreamResponse(
                status_code or 200, {"content-type": "text/event-stream"}, body, httpx.Headers()
            ),
            stream_started=self.started,
            **extra,
        )

    def relay(self, response: httpx.Response):
        if not 200 <= response.status_code < 300:
            body = response.read()
            retryable = retry_policy.is_retryable_status(response.status_code, body)
            return AttemptResult(
                Attempt.Outcome.RETRYABLE_ERROR if retryable else Attempt.Outcome.FATAL_ERROR,
                status_code=response.status_code,
                error_code=retry_policy.error_code_of(body),
                retry_after_ms=retry_policy.retry_after_ms(response.headers),
                response=upstream.UpstreamResponse(
                    response.status_code,
                    upstream.forwarded_headers(response.headers),
                    body,
                    response.headers,
                ),
            )
        last_renew = time.monotonic()
        watcher = threading.Thread(target=self._watch_client, args=(response,), daemon=True)
        watcher.start()
        try:
            return self._relay_body(response, last_renew)
        finally:
            self.finished.set()

    def _watch_client(self, response: httpx.Response) -> None:
        """Abandon the upstream call as soon as the client leaves, even mid-wait for a chunk."""
        while not self.finished.wait(CANCEL_CHECK_SECONDS):
            if self.publisher.client_gone():
                self.client_left = True
                response.close()
                return

    def _relay_body(self, response: httpx.Response, last_renew: float) -> AttemptResult:
        for chunk in response.iter_raw():
            if not self.started:
                if not looks_like_sse(chunk.split(b"\n", 1)[0]):
                    return AttemptResult(
                        Attempt.Outcome.FATAL_ERROR,
                        status_code=response.status_code,
                        error_code="invalid_event_stream",
                    )
                self._start(response)
            self.delivered += chunk
            self.publisher.chunk(chunk)
            now = time.monotonic()
            if now - last_renew > LEASE_RENEW_SECONDS:
                last_renew = now
                self._renew_lease()
        if self.client_left:
            return self.result(
                Attempt.Outcome.FATAL_ERROR,
                status_code=200,
                error_code="client_disconnected",
                client_gone=True,
            )
        if not completed(self.request.endpoint, bytes(self.delivered)):
            return self.result(
                Attempt.Outcome.CONNECTION_ERROR, status_code=200, error_code="stream_incomplete"
            )
        self.publisher.send("end")
        return self.result(Attempt.Outcome.SUCCESS, status_code=response.status_code)


def stream_attempt(
    *, request: Request, number: int, provider_key: str, body: bytes, lease: timedelta
):
    relay = StreamRelay(request=request, number=number, lease=lease)
    if relay.publisher.client_gone():
        return AttemptResult(
            Attempt.Outcome.FATAL_ERROR, error_code="client_disconnected", client_gone=True
        )
    timeout = request.project.attempt_timeout_seconds  # also the inter-chunk timeout
    try:
        with upstream.client().stream(
            "POST",
            upstream.endpoint_url(request.project.upstream_base_url, request.endpoint),
            content=body,
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={
                "Authorization": f"Bearer {provider_key}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
            },
        ) as response:
            return relay.relay(response)
    except httpx.TimeoutException:
        outcome, code = Attempt.Outcome.TIMEOUT, "timeout"
    except (httpx.TransportError, httpx.StreamClosed) as error:
        outcome, code = Attempt.Outcome.CONNECTION_ERROR, type(error).__name__.lower()[:64]
    if relay.client_left or relay.publisher.client_gone():
        return relay.result(
            Attempt.Outcome.FATAL_ERROR,
            status_code=200,
            error_code="client_disconnected",
            client_gone=True,
        )
    if relay.started:
        return relay.result(outcome, status_code=200, error_code=code)
    return AttemptResult(outcome, error_code=code)
