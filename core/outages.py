"""The errors that mean a store cannot serve ReqRun just now (down, restarting, out of
connections or memory, a read-only replica, a password refused), as opposed to one refusing
what was asked of it: callers wait, retry or answer 503 on these."""

import redis
from django.db import InterfaceError, OperationalError

# Django wraps psycopg's connection failures, and psycopg_pool's PoolTimeout, in these; they
# also cover a deadlock or a cancelled statement, which are worth trying again too.
# Long enough for a restarting database or Redis, short enough that a retry soon succeeds.
OUTAGE_RETRY_AFTER_SECONDS = 5

DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
# A Redis that answers can still refuse every write until an operator acts: out of memory
# under `noeviction` (OOM), a replica after a failover (READONLY), a primary without its
# replicas (MASTERDOWN), an ACL that forbids our commands (NOPERM). A refused password
# (NOAUTH, WRONGPASS) is an AuthenticationError, a ConnectionError already.
REDIS_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.NoPermissionError,
)
# Redis refuses writes with MISCONF when it cannot save its snapshot
# (stop-writes-on-bgsave-error); redis-py has no class of its own for it.
REDIS_REFUSING_WRITES = ("MISCONF",)


def is_redis_outage(error: BaseException) -> bool:
    """Whether `error` means ReqRun's Redis cannot serve it just now."""
    return isinstance(error, REDIS_UNAVAILABLE) or (
        isinstance(error, redis.ResponseError) and str(error).startswith(REDIS_REFUSING_WRITES)
    )


def is_outage(error: BaseException) -> bool:
    """Whether `error` means ReqRun's PostgreSQL or Redis cannot be reached just now.

    Of the database's OperationalErrors, a deadlock or a cancelled statement is not an
    outage; psycopg's SQLSTATE tells them apart (none on the client side, 08 connection,
    53 resources, 57P shutdown). IntegrityError and DataError are bugs, never outages.
    """
    if isinstance(error, InterfaceError) or is_redis_outage(error):
        return True
    if not isinstance(error, OperationalError):
        return False
    sqlstate = getattr(error.__cause__, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "53", "57P"))
