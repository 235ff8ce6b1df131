"""One streamed attempt: relay the upstream's SSE through Redis as it arrives.

Before the first bytes leave, a failure is an ordinary attempt outcome and may be retried.
After that, nothing is retried: a cut, a stall past the inter-chunk timeout, an answer over
the size cap, the request's deadline, a lost lease, every reader gone or a reader that
cannot decrypt the stream ends the attempt, and the conclusion records what was delivered
as partial.

A watcher thread runs beside the relay from before the upstream answers: it renews the
lease (and the concurrency slot, and the breaker's probe when the attempt is one) so a long
stream is never mistaken for a dead worker, nor a half-open upstream probed twice at once,
stops the relay when the renewal finds the lease taken (the sweeper recovered the request),
and stops it when the readers ask (the last has left, or one cannot decrypt the stream) or
the deadline has passed.
"""

import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta

import httpx
from django.conf import settings
from django.db import connection
from django.utils import timezone

from projects.models import Upstream
from requests_app.engine import breaker, concurrency, sse, upstream
from requests_app.engine.outcomes import AttemptResult, UpstreamResponse
from requests_app.engine.streams import CHUNK_UNREADABLE, READERS_LEFT, StreamPublisher
from requests_app.models import Attempt, Request, Status

logger = logging.getLogger(__name__)

WATCH_SECONDS = 0.25
LEASE_RENEW_SECONDS = 5.0
FIRST_LINE_LIMIT = 64 * 1024  # read this far for the first line break, then decide


def as_relayed(result: AttemptResult, endpoint: str) -> AttemptResult:
    """A started stream's failed attempt as its readers got it. Once the upstream's end
    ([DONE], or the Responses API's last event) has been relayed, the readers have the whole
    answer, so whatever failed after it (an upstream that does not close, a Redis that
    refuses the `end` entry, a worker lost before recording it) ends the attempt as the
    upstream's answer did: a success, or the error the upstream reported inside its stream.
    The worker's relay and the sweeper (`recovery.lost_attempt`) both decide it here."""
    body = result.response.body if result.response else b""
    if result.outcome == Attempt.Outcome.SUCCESS or not sse.completed(endpoint, body):
        return result
    if sse.reports_error(body):
        outcome, code = Attempt.Outcome.FATAL_ERROR, "upstream_stream_error"
    else:
        outcome, code = Attempt.Outcome.SUCCESS, None
    return replace(result, outcome=outcome, error_code=code, client_gone=False)


class Stopped(Exception):
    """The watcher ended the relay; `code` says why."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


class StreamRelay:
    def __init__(
        self,
        *,
        request: Request,
        number: int,
        upstream_name: str,
        lease: timedelta,
        slot: str,
        probe: Upstream | None = None,
    ):
        self.request = request
        self.probe = probe  # the half-open upstream this attempt probes, if it does
        self.number = number
        self.upstream_name = upstream_name
        self.lease = lease
        self.slot = slot
        self.publisher = StreamPublisher(request.public_id, number)
        self.delivered = bytearray()
        self.started = False
        self.stop_reason: str | None = None
        self.response: httpx.Response | None = None
        self.pool = upstream.transport()  # this thread's, through which the call goes
        self.headers: dict[str, str] = {}  # the upstream's, as its readers get them
        self.finished = threading.Event()

    # The watcher thread --------------------------------------------------------------

    def watch(self) -> None:
        renewed = time.monotonic()
        # Well inside the lease, however short the project's timeout makes it.
        renew_every = min(LEASE_RENEW_SECONDS, self.lease.total_seconds() / 3)
        try:
            while not self.finished.wait(WATCH_SECONDS):
                if timezone.now() >= self.request.deadline_at:
                    self._stop("deadline_exceeded")
                    return
                try:
                    if time.monotonic() - renewed > renew_every:
                        owned = self._renew_lease()
                        renewed = time.monotonic()
                        if not owned:
                            self._stop("lease_lost")
                            return
                    if reason := self.publisher.stopped_by_readers():
                        self._stop(reason)
                        return
                except Exception as error:  # noqa: BLE001 - an outage must not end the watch
                    # The database or Redis is unreachable: the stream goes on, and the
                    # renewal is tried again at the next tick, before the lease runs out.
                    logger.warning(
                        "stream watch could not reach a store; trying again",
                        extra={
                            "request_id": self.request.public_id,
                            "exception": type(error).__name__,
                        },
                    )
                finally:
                    connection.close()  # back to the pool: a stream holds no connection
        finally:
            connection.close()  # this thread's own connection

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        if self.response is not None:
            self.response.close()
        else:  # the upstream has not answered yet: cut the call that waits for it
            upstream.interrupt(self.pool)

    def _renew_lease(self) -> bool:
        """Extend the lease while this attempt still owns the request; False if it does not."""
        now = timezone.now()
        renewed = Request.objects.filter(
            pk=self.request.pk, attempt_count=self.number, status=Status.RUNNING
        ).update(lease_until=now + self.lease)
        if renewed:
            concurrency.renew(
                account_id=self.request.account_id,
                token=self.slot,
                lease_seconds=self.lease.total_seconds(),
            )
            if self.probe is not None:
                breaker.renew_probe(self.probe, now=now, lease=self.lease)
        return bool(renewed)

    # The relay -----------------------------------------------------------------------

    def _start(self, response: httpx.Response) -> None:
        # Recorded before the first bytes leave: from here on no worker and no sweeper
        # may retry this request, even if this process dies the next instant.
        marked = Request.objects.filter(
            pk=self.request.pk, attempt_count=self.number, status=Status.RUNNING
        ).update(first_byte_at=timezone.now())
        connection.close()  # back to the pool for the rest of the stream
        if not marked:
            raise Stopped("lease_lost")
        self.publisher.start(
            response.status_code,
            upstream.with_upstream_header(self.headers, self.upstream_name),
        )
        self.started = True

    def relay(self, response: httpx.Response) -> AttemptResult:
        self.response = response
        if self.stop_reason:
            raise Stopped(self.stop_reason)
        if not 200 <= response.status_code < 300:
            deadline = time.monotonic() + self.request.project.attempt_timeout_seconds
            return upstream.classify(answer=upstream.read_answer(response, deadline=deadline))
        self.headers = upstream.forwarded_headers(response.headers)
        # Nothing leaves before the first line has arrived whole (its bytes may come in
        # pieces) and reads as an event stream, and then only whole events: a stream that
        # breaks off leaves its callers no half event for the error event to run into.
        pending = bytearray()  # read, not relayed yet: the event in progress
        first_line_read = False
        for chunk in response.iter_bytes():  # decoded, if an upstream compressed it
            looked = len(pending)
            pending += chunk
            if len(self.delivered) + len(pending) > settings.REQRUN_MAX_RESPONSE_BYTES:
                return self.ended(Attempt.Outcome.FATAL_ERROR, "upstream_response_too_large")
            if not first_line_read:
                if not sse.has_first_line(pending) and len(pending) < FIRST_LINE_LIMIT:
                    continue
                if not sse.starts_as_event_stream(pending):
                    return self.not_an_event_stream(response)
                first_line_read = True
            if end := sse.whole_events_end(pending, looked=looked):
                self.deliver(bytes(pending[:end]))
                del pending[:end]
        if self.stop_reason:
            raise Stopped(self.stop_reason)
        if not first_line_read and not (pending and sse.starts_as_event_stream(pending)):
            return self.not_an_event_stream(response)  # nothing, or not SSE
        if pending and sse.completed(self.request.endpoint, bytes(self.delivered) + pending):
            self.deliver(bytes(pending))  # its last event, ended by the close, not a blank line
        if sse.reports_error(bytes(self.delivered)):
            # Relayed as the upstream sent it (too late to retry), but not a success.
            return self.result(Attempt.Outcome.FATAL_ERROR, error_code="upstream_stream_error")
        if not sse.completed(self.request.endpoint, bytes(self.delivered)):
            # Closed early; if inside its first event, nothing reached a caller: retried. Not
            # on this connection if its framing ended it: the rest may still be on its way.
            upstream.close_connection(response)
            return self.ended(Attempt.Outcome.CONNECTION_ERROR, "stream_incomplete")
        unread = self.publisher.unread()  # asked first: the end lets its readers go
        self.publisher.send("end")
        return self.result(Attempt.Outcome.SUCCESS, unread=unread)

    def deliver(self, events: bytes) -> None:
        """Relay whole `events`, the first of them after the start."""
        if not self.started:
            self._start(self.response)
        self.delivered += events
        self.publisher.chunk(events)

    @staticmethod
    def not_an_event_stream(response: httpx.Response) -> AttemptResult:
        """Nothing was relayed: an empty answer, or one that is not SSE."""
        return AttemptResult(
            Attempt.Outcome.FATAL_ERROR,
            status_code=response.status_code,
            error_code="invalid_event_stream",
        )

    def result(
        self, outcome: str, *, error_code: str | None = None, unread: bool | None = None
    ) -> AttemptResult:
        """An outcome once bytes have left: what was delivered, never to be retried, and
        what the readers got if the failure came after the end (`as_relayed`). `unread`:
        whether nobody was reading it, when not asked already (readers who stopped it
        mid-stream had what was relayed: not unread)."""
        if unread is None:
            stopped_by_readers = error_code in (READERS_LEFT, CHUNK_UNREADABLE)
            unread = not stopped_by_readers and self.publisher.unread()
        body = bytes(self.delivered)
        # The headers the callers got with the first bytes, so a replay carries them too.
        headers = {"content-type": "text/event-stream", **self.headers}
        result = AttemptResult(
            outcome,
            status_code=200,
            error_code=error_code,
            response=UpstreamResponse(200, headers, body, httpx.Headers()),
            stream_started=self.started,
            stream_unread=unread,
            client_gone=error_code == READERS_LEFT,
        )
        return as_relayed(result, self.request.endpoint)

    def ended(self, outcome: str, code: str) -> AttemptResult:
        """An attempt that did not succeed: with what was delivered once bytes have left,
        else an ordinary failed attempt (nothing reached a caller, so it may be retried)."""
        if self.started:
            return self.result(outcome, error_code=code)
        return AttemptResult(outcome, error_code=code, client_gone=code == READERS_LEFT)

    def stopped(self, code: str) -> AttemptResult:
        outcome = {
            READERS_LEFT: Attempt.Outcome.FATAL_ERROR,
            CHUNK_UNREADABLE: Attempt.Outcome.FATAL_ERROR,
            "deadline_exceeded": Attempt.Outcome.TIMEOUT,
        }.get(code, Attempt.Outcome.CONNECTION_ERROR)
        return self.ended(outcome, code)


def stream_attempt(
    *,
    request: Request,
    number: int,
    upstream_name: str,
    url: str,
    provider_key: str,
    body: bytes,
    lease: timedelta,
    slot: str,
    probe: Upstream | None = None,
) -> AttemptResult:
    """Run one streamed attempt to its result; never raises. `probe`: the half-open upstream
    this attempt is the probe of, held as long as the stream runs."""
    relay = StreamRelay(
        request=request,
        number=number,
        upstream_name=upstream_name,
        lease=lease,
        slot=slot,
        probe=probe,
    )
    if reason := relay.publisher.stopped_by_readers():
        return relay.stopped(reason)
    watcher = threading.Thread(target=relay.watch, daemon=True)
    watcher.start()
    try:
        with upstream.open_stream(
            url=url,
            provider_key=provider_key,
            body=body,
            timeout=request.project.attempt_timeout_seconds,  # also between two chunks
        ) as response:
            return relay.relay(response)
    except Stopped as stop:
        return relay.stopped(stop.code)
    except Exception as error:  # noqa: BLE001 - every fault is an outcome, see classify()
        if relay.stop_reason:  # the watcher closed the connection under the relay
            return relay.stopped(relay.stop_reason)
        result = upstream.classify(error=error)
        if relay.started:
            return relay.result(result.outcome, error_code=result.error_code)
        return result
    finally:
        relay.finished.set()
