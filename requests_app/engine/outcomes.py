"""What one attempt came to, as the executor and the stream relay report it."""

from dataclasses import dataclass

from requests_app.engine.upstream import UpstreamResponse


@dataclass
class AttemptResult:
    outcome: str
    status_code: int | None = None
    error_code: str | None = None
    retry_after_ms: int | None = None
    response: UpstreamResponse | None = None
    stream_started: bool = False  # bytes reached the client: never retry
    client_gone: bool = False  # the streaming client disconnected: cancel
