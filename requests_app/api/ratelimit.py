"""ReqRun's own per-project rate limit: a fixed one-minute window counted in Redis."""

import time
from dataclasses import dataclass

from requests_app.engine.redis_client import client

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset_seconds: int
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {
            "ReqRun-RateLimit-Limit": str(self.limit),
            "ReqRun-RateLimit-Remaining": str(self.remaining),
            "ReqRun-RateLimit-Reset": str(self.reset_seconds),
        }


def _window() -> tuple[int, int]:
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    reset = int((window + 1) * WINDOW_SECONDS - now) or 1
    return window, reset


def _key(project_id: int, window: int) -> str:
    return f"reqrun:ratelimit:{project_id}:{window}"


def hit(*, project_id: int, limit: int) -> RateLimitState:
    """Count one request in this window; shared by every web process through Redis."""
    window, reset = _window()
    key = _key(project_id, window)
    with client().pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS + 5)  # the key is per window; no NX on Redis 6
        used, _ = pipe.execute()
    return RateLimitState(
        limit=limit, remaining=max(0, limit - used), reset_seconds=reset, allowed=used <= limit
    )


def peek(*, project_id: int, limit: int) -> RateLimitState:
    window, reset = _window()
    used = int(client().get(_key(project_id, window)) or 0)
    return RateLimitState(
        limit=limit, remaining=max(0, limit - used), reset_seconds=reset, allowed=used < limit
    )
