"""The errors that mean a store cannot serve ReqRun just now (down, restarting, out of
connections or memory, read-only after a failover, too slow, a password refused), as opposed
to one refusing what was asked of it: callers wait, retry or answer 503 on these."""

import re

import redis
from django.db import DatabaseError, InterfaceError, InternalError, OperationalError

from core.schema import met_unmigrated_schema

# Long enough for a restarting database or Redis, short enough that a retry soon succeeds.
OUTAGE_RETRY_AFTER_SECONDS = 5

# Django wraps psycopg's connection failures, and psycopg_pool's PoolTimeout, in these; they
# also cover a deadlock, which is worth trying again too (but is not an outage).
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
# Redis before 7 wraps a refusal met inside a script (the concurrency slots' Lua) in an error
# of its own that redis-py cannot tell apart: "Error running script (call to f_…):
# @user_script:2: @user_script: 2: -READONLY You can't write against a read only replica."
REFUSED_INSIDE_A_SCRIPT = re.compile(r": -(OOM|READONLY|MASTERDOWN|NOPERM|MISCONF) ")


def is_redis_outage(error: BaseException) -> bool:
    """Whether `error` means ReqRun's Redis cannot serve it just now."""
    if isinstance(error, REDIS_UNAVAILABLE):
        return True
    if not isinstance(error, redis.ResponseError):
        return False
    message = str(error)
    return message.startswith(REDIS_REFUSING_WRITES) or bool(
        REFUSED_INSIDE_A_SCRIPT.search(message)
    )


# The SQLSTATEs of a database that is up but cannot serve just now, each the operator's to
# fix, never a bug of ReqRun's (a classes' prefix, or one code):
# 08 connection exception; 53 insufficient resources (53300 too many clients, for the server
# or for the role); 57P the server shutting down or restarting; 57014 a statement canceled
# (statement_timeout, or an operator's pg_cancel_backend); 55P03 a lock not had in time
# (lock_timeout); 25006 a write refused by a read-only transaction (a standby, or a database
# set default_transaction_read_only, as after a failover).
OUTAGE_SQLSTATES = ("08", "53", "57P", "57014", "55P03", "25006")


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL gave for `error` (Django keeps psycopg's as its cause)."""
    return getattr(error.__cause__, "sqlstate", None)


def is_outage(error: BaseException) -> bool:
    """Whether `error` means ReqRun's PostgreSQL or Redis cannot serve just now.

    A deadlock (40P01) or a serialization failure stays ReqRun's own error, as does an
    IntegrityError or DataError: the database did as told, the statement was wrong. A
    database error with no SQLSTATE was raised on the client side: no connection to be had.
    """
    if isinstance(error, InterfaceError) or is_redis_outage(error):
        return True
    if met_unmigrated_schema(error):  # until `migrate` has run
        return True
    if not isinstance(error, OperationalError | InternalError):
        return False
    code = sqlstate(error)
    if code is None:
        return isinstance(error, OperationalError)
    return code.startswith(OUTAGE_SQLSTATES)


def database_unavailable(error: BaseException) -> bool:
    """Whether a write that failed with `error` is worth trying again later, as the worker
    does with an attempt's result: an outage, a deadlock or a cancelled statement."""
    return isinstance(error, DATABASE_UNAVAILABLE) or (
        isinstance(error, DatabaseError) and is_outage(error)
    )
