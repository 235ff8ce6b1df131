"""What each process's psycopg pool does when it gives up opening a connection: one more
try, and if the database still refuses, its waiting callers are told at once (settings'
`reconnect_failed`)."""

import psycopg
from psycopg_pool import ConnectionPool


class ConnectionsRefused(psycopg.OperationalError):
    """The pool gave up opening a connection: the database refused every try."""


def fail_waiting_callers(pool: ConnectionPool) -> None:
    """psycopg_pool's `reconnect_failed` callback: every caller waiting for a connection
    gets the outage error now (a 503 within about 2 s), not at the end of DB_POOL_TIMEOUT,
    unless the database takes connections again by now.

    A caller that finds no idle connection waits for one the pool opens. While PostgreSQL
    refuses new connections (too many clients, the server down) none will come: the pool
    tries for `reconnect_timeout` and gives up, and its callers would wait the rest of the
    30 s, the web's threads stuck meanwhile and a /v1 caller's SDK retrying twice. A pool
    merely busy, its connections healthy, gives nothing up and its callers wait as before.

    The pool judges its last try before it gives up, and the database may free slots in
    between (a pool opening several connections gives each up on its own, moments apart):
    so one more try comes first. If it opens, the connection goes to the pool as the given
    up one would have, and from there to the first caller waiting.

    psycopg_pool has no public way to end the waits or to add a connection it opened
    outside its own tasks: this does what its close() and its connection tasks do, under
    its lock (psycopg_pool 3.3; `tests/requests_app/test_connections_refused.py` covers
    each way through)."""
    try:
        conn = pool._connect()
    except Exception as refusal:  # psycopg_pool's own tries catch any exception too
        fail_callers(pool, f"{type(refusal).__name__} on a last try")
        return
    with pool._lock:
        pool._nconns += 1  # counted again: psycopg_pool counted the given up one out
    pool._add_to_pool(conn)


def fail_callers(pool: ConnectionPool, reason: str) -> None:
    """Every caller waiting on `pool` gets ConnectionsRefused now."""
    with pool._lock:
        waiting = list(pool._waiting)
        pool._waiting.clear()
    message = (
        f"the pool {pool.name!r} could not open a connection in "
        f"{pool.reconnect_timeout:g} s ({reason})"
    )
    for caller in waiting:
        caller.fail(ConnectionsRefused(message))
