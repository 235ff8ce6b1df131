"""What each process's psycopg pool does when it cannot open a connection: its waiting
callers are told at once (settings' `reconnect_failed`)."""

import psycopg
from psycopg_pool import ConnectionPool


class ConnectionsRefused(psycopg.OperationalError):
    """The pool gave up opening a connection: the database refused every try."""


def fail_waiting_callers(pool: ConnectionPool) -> None:
    """psycopg_pool's `reconnect_failed` callback: every caller waiting for a connection
    gets the outage error now (a 503 within about 2 s), not at the end of DB_POOL_TIMEOUT.

    A caller that finds no idle connection waits for one the pool opens. While PostgreSQL
    refuses new connections (too many clients, the server down) none will come: the pool
    tries for `reconnect_timeout` and gives up, and its callers would wait the rest of the
    30 s, the web's threads stuck meanwhile and a /v1 caller's SDK retrying twice. A pool
    merely busy, its connections healthy, gives nothing up and its callers wait as before;
    a caller arriving later makes the pool try afresh, and is served once one opens.

    psycopg_pool has no public way to end the waits: this does to them what its own
    close() does, under its lock (psycopg_pool 3.3)."""
    with pool._lock:
        waiting = list(pool._waiting)
        pool._waiting.clear()
    message = f"the pool {pool.name!r} could not open a connection in {pool.reconnect_timeout:g} s"
    for caller in waiting:
        caller.fail(ConnectionsRefused(message))
