"""What one attempt came to: the upstream's answer as read, and the attempt's result."""

from dataclasses import dataclass

import httpx


@dataclass
class UpstreamResponse:
    status_code: int
    headers: dict[str, str]
    body: bytes
    all_headers: httpx.Headers  # every header as sent (Retry-After, Location…), never relayed


@dataclass
class AttemptResult:
    outcome: str
    status_code: int | None = None
    error_code: str | None = None
    retry_after_ms: int | None = None
    response: UpstreamResponse | None = None
    stream_started: bool = False  # bytes reached the client: never retry
    # A started stream nobody was reading when it ended (its callers had left with their
    # 202 before the first bytes): its answer reached no one yet.
    stream_unread: bool = False
    client_gone: bool = False  # every streaming reader disconnected: cancel
    upstream: str | None = None  # the name of the upstream this attempt went to
    message: str | None = None  # the error's message when it depends on the answer
    # A plain call's token usage, from the parse that found its answer whole (classify).
    usage: dict | None = None
    # The upstream's own provider key could not be decrypted: nothing was sent, and another
    # upstream, with a key that opens, may take the call (failover.next_upstream).
    key_unreadable: bool = False
