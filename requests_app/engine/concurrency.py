"""Per-account limits on concurrent upstream calls, shared by every worker through Redis.

Each running attempt holds a slot: a member of the account's sorted set, scored by when
its lease runs out and named by a token of that attempt's own (`slot_token`), so a
duplicate or late task for the same request can never free or renew another attempt's
slot. Expired slots (a worker died) are dropped on the next acquire, so a dead worker's
capacity comes back by itself. Work that finds no free slot is not refused: it is put
back with a short delay and picked up again by the sweeper.
"""

import time
import uuid
from dataclasses import dataclass

import redis

from requests_app.engine.redis_client import client

SLOT_KEY_TTL_SECONDS = 3600

ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


_acquire = None


def _acquire_script():
    """The script, sent once and then called by its hash (EVALSHA); redis-py sends it
    again by itself if Redis restarted and forgot it."""
    global _acquire
    if _acquire is None:
        _acquire = client().register_script(ACQUIRE)
    return _acquire


def _key(account_id: int) -> str:
    return f"reqrun:slots:{account_id}"


def slot_token(request_pk: int) -> str:
    return f"{request_pk}:{uuid.uuid4().hex[:12]}"


def acquire(*, account_id: int, token: str, limit: int, lease_seconds: float) -> bool:
    now = time.time()
    return bool(
        _acquire_script()(
            keys=[_key(account_id)],
            args=[now, limit, token, now + lease_seconds, SLOT_KEY_TTL_SECONDS],
        )
    )


def renew(*, account_id: int, token: str, lease_seconds: float) -> None:
    client().zadd(_key(account_id), {token: time.time() + lease_seconds}, xx=True)


def release(*, account_id: int, token: str, pipe: redis.client.Pipeline | None = None) -> None:
    """Free the slot now, or, given a pipeline, with the pipeline's other commands."""
    (pipe if pipe is not None else client()).zrem(_key(account_id), token)


@dataclass
class Held:
    """The slot an attempt holds, released once: with the request's completion notice when
    the attempt ends it (one Redis round trip for both), else on its own afterwards."""

    account_id: int
    token: str
    released: bool = False

    def release(self, pipe: redis.client.Pipeline | None = None) -> None:
        if not self.released:
            self.released = True
            release(account_id=self.account_id, token=self.token, pipe=pipe)


def in_use(account_id: int) -> int:
    return client().zcount(_key(account_id), time.time(), "+inf")
