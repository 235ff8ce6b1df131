"""What each process's psycopg pool does when it gives up opening a connection: one more
try, and if the database still refuses, the web's waiting callers are told at once and a
worker's keep waiting while the pool tries on (settings' `reconnect_failed`)."""

import psycopg
from psycopg_pool import ConnectionPool

# Set in a Celery worker (`callers_wait_for_the_database`): see connection_given_up.
_callers_wait = False


def callers_wait_for_the_database(**_) -> None:
    """From now on this process's callers wait out a refusal (a worker's `worker_init`)."""
    global _callers_wait
    _callers_wait = True


class ConnectionsRefused(psycopg.OperationalError):
    """The pool gave up opening a connection: the database refused every try."""


def connection_given_up(pool: ConnectionPool) -> None:
    """psycopg_pool's `reconnect_failed` callback: the callers waiting for a connection
    get the outage error now (a 503 within about 2 s), not at the end of DB_POOL_TIMEOUT,
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

    In a worker nobody waits on the thread for an answer, and a task told at once would
    leave its request to the sweeper (a redispatch wait of 10 s and more): its callers wait
    on, up to DB_POOL_TIMEOUT, while the pool starts another round of tries, and the first
    connection that opens goes to them.

    Only the callers already waiting when the last try began are told: one who came while
    it was under way (as the database freed slots, say) did not wait through the refusals,
    and gets a round of tries of its own.

    psycopg_pool has no public way to end the waits or to add a connection it opened
    outside its own tasks: this does what its close() and its connection tasks do, under
    its lock (psycopg_pool 3.3; `tests/requests_app/test_connections_refused.py` covers
    each way through)."""
    with pool._lock:
        waited_through_it = list(pool._waiting)
    try:
        conn = pool._connect()
    except Exception as refusal:  # psycopg_pool's own tries catch any exception too
        if not _callers_wait:
            fail_callers(pool, waited_through_it, f"{type(refusal).__name__} on a last try")
        keep_trying(pool)
        return
    with pool._lock:
        # Counted again, as psycopg_pool counted the given up one out: unless the pool grew
        # to its size meanwhile.
        room = pool._nconns < pool._max_size
        if room:
            pool._nconns += 1
    if room:
        pool._add_to_pool(conn)
    else:
        conn.close()


def fail_callers(pool: ConnectionPool, callers: list, reason: str) -> None:
    """Those of `callers` still waiting on `pool` get ConnectionsRefused now."""
    with pool._lock:
        waiting = [caller for caller in callers if caller in pool._waiting]
        for caller in waiting:
            pool._waiting.remove(caller)
    message = (
        f"the pool {pool.name!r} could not open a connection in "
        f"{pool.reconnect_timeout:g} s ({reason})"
    )
    for caller in waiting:
        caller.fail(ConnectionsRefused(message))


def keep_trying(pool: ConnectionPool) -> None:
    """Another round of tries to open a connection, if a caller still waits for one (what
    psycopg_pool's getconn does when it finds none idle). A caller whose wait timed out
    stays in the queue, with its error set, until a connection comes: it does not count."""
    with pool._lock:
        if any(not (caller.conn or caller.error) for caller in pool._waiting):
            pool._maybe_grow_pool()
