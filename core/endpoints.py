"""The one table of /v1 endpoints: routes, streaming, metering, the schema and the upstream
base URL check all read it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    streams: bool  # accepts `stream: true` and relays server-sent events
    counted: bool  # recorded as a request and counted against the quota
    summary: str


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/v1/chat/completions", "POST", True, True, "Create a chat completion"),
    Endpoint("/v1/completions", "POST", True, True, "Create a completion"),
    Endpoint("/v1/responses", "POST", True, True, "Create a model response"),
    Endpoint("/v1/embeddings", "POST", False, True, "Create embeddings"),
    Endpoint("/v1/images/generations", "POST", False, True, "Generate images"),
    Endpoint("/v1/moderations", "POST", False, True, "Classify content for moderation"),
    Endpoint("/v1/models", "GET", False, False, "List the upstream's models"),
    Endpoint("/v1/models/{model_id}", "GET", False, False, "Get one of the upstream's models"),
)

# Recorded, retried and deduplicated: the endpoints a request object can name.
PROXIED_ENDPOINTS: tuple[str, ...] = tuple(e.path for e in ENDPOINTS if e.counted)
STREAMING_ENDPOINTS: tuple[str, ...] = tuple(e.path for e in ENDPOINTS if e.streams)


def endpoint(path: str) -> Endpoint:
    return next(entry for entry in ENDPOINTS if entry.path == path)


def upstream_path(path: str) -> str:
    """`/v1/chat/completions` → `/chat/completions`: what is added to an upstream's base URL,
    which already holds its own version (`https://api.openai.com/v1`)."""
    return path.removeprefix("/v1")
