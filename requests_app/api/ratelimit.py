"""ReqRun's own rate limit: the plan's requests per minute for the whole account (all its
projects and keys together, like its monthly quota), a fixed one-minute window in Redis."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.client import Pipeline

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
    """This window's number and the whole seconds until the next one begins, rounded up: a
    client that waits that long (`Retry-After`) is never refused again by the same window."""
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    reset = math.ceil((window + 1) * WINDOW_SECONDS - now)
    return window, reset


def _key(account_id: int, window: int) -> str:
    return f"reqrun:ratelimit:account:{account_id}:{window}"


def queue(
    pipe: Pipeline, *, account_id: int, limit: int, count: bool
) -> Callable[[list], RateLimitState]:
    """Put this window's count on `pipe` (counting one request, or only reading it), so the
    caller can send it with other commands in one round trip. Returns what turns the
    results of the commands queued here into the state."""
    window, reset = _window()
    key = _key(account_id, window)
    if count:
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS + 5)  # the key is per window; no NX on Redis 6
    else:
        pipe.get(key)

    def state(results: list) -> RateLimitState:
        used = int(results[0] or 0)
        return RateLimitState(
            limit=limit,
            remaining=max(0, limit - used),
            reset_seconds=reset,
            allowed=used <= limit if count else used < limit,
        )

    return state


def _one_round_trip(*, account_id: int, limit: int, count: bool) -> RateLimitState:
    with client().pipeline(transaction=False) as pipe:
        state = queue(pipe, account_id=account_id, limit=limit, count=count)
        return state(pipe.execute())


def hit(*, account_id: int, limit: int) -> RateLimitState:
    """Count one request in this window; shared by every web process through Redis."""
    return _one_round_trip(account_id=account_id, limit=limit, count=True)


def peek(*, account_id: int, limit: int) -> RateLimitState:
    return _one_round_trip(account_id=account_id, limit=limit, count=False)
