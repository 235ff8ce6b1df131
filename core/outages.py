"""The errors that mean a store is unreachable (down, restarting, out of connections), as
opposed to one refusing what was asked of it: callers wait, retry or answer 503 on these."""

import redis
from django.db import InterfaceError, OperationalError

# Django wraps psycopg's connection failures, and psycopg_pool's PoolTimeout, in these; they
# also cover a deadlock or a cancelled statement, which are worth trying again too.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)


def is_outage(error: BaseException) -> bool:
    """Whether `error` means ReqRun's PostgreSQL or Redis cannot be reached just now.

    Of the database's OperationalErrors, a deadlock or a cancelled statement is not an
    outage; psycopg's SQLSTATE tells them apart (none on the client side, 08 connection,
    53 resources, 57P shutdown). IntegrityError and DataError are bugs, never outages.
    """
    if isinstance(error, (InterfaceError, *REDIS_UNAVAILABLE)):
        return True
    if not isinstance(error, OperationalError):
        return False
    sqlstate = getattr(error.__cause__, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "53", "57P"))
