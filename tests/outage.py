"""A PostgreSQL outage without stopping the suite's shared server.

By default it is one web process's: the web runs as its own process (the Procfile's line)
whose database sessions carry an application_name of their own, and only those are cut;
the outage refuses every new connection to the test database all the same.
"""

import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
from django.db import connection

from requests_app.models import Request
from tests.conftest import ProcfileWeb, wait_until
from tests.conftest import test_database_url as database_url_for_tests

WEB_DATABASE_NAME = "reqrun-outage-web"


def drop_every_other_connection() -> None:
    """What a restart does to the connections web and worker keep in their pools (the
    server ends each with "terminating connection due to administrator command").

    pg_terminate_backend only signals; a restart has ended every session before the server
    answers again, so this waits until they are gone too."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        pids = [pid for (pid,) in cursor.fetchall()]
        cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.02)


def outage_web(log_path: Path, **env: str) -> ProcfileWeb:
    """A web process whose database sessions `database_outage` cuts."""
    url = f"{database_url_for_tests()}?application_name={WEB_DATABASE_NAME}"
    return ProcfileWeb(log_path, DATABASE_URL=url, **env)


def _admin_connection() -> psycopg.Connection:
    """A session on the `postgres` database, which a change to the test database's
    defaults leaves as it is."""
    params = connection.settings_dict
    return psycopg.connect(
        host=params["HOST"],
        port=params["PORT"],
        user=params["USER"],
        password=params["PASSWORD"],
        dbname="postgres",
        autocommit=True,
    )


def _own_pid() -> int:
    """The test's own session, which every outage leaves alone."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@contextmanager
def database_outage(*, every_process: bool = False):
    """The database refuses new connections and open ones are cut, as when the server
    stops: the web's (see `outage_web`), or with `every_process` every one but the test's
    own. PostgreSQL takes that only from a session on another database."""
    params = connection.settings_dict
    name = connection.ops.quote_name(params["NAME"])
    own_pid = _own_pid()
    with _admin_connection() as admin:
        admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> %s AND (%s OR application_name = %s)",
                [params["NAME"], own_pid, every_process, WEB_DATABASE_NAME],
            )
            yield
        finally:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")


def _hold_every_free_connection(held: list[psycopg.Connection]) -> None:
    """Open sessions on the `postgres` database until the server refuses one for want of
    a free slot (superusers may take the reserved ones too)."""
    while True:
        try:
            held.append(_admin_connection())
        except psycopg.OperationalError as error:
            if "too many clients" not in str(error):
                raise
            return


@contextmanager
def connections_exhausted(*, spare_own_session: bool = True):
    """PostgreSQL refuses every new connection: `FATAL: sorry, too many clients already`
    (53300), as when `max_connections` are all taken. Every session of the test database
    is cut, so each process must open new ones, but the test's own if `spare_own_session`
    (it stays open and usable). Every slot is free again on leaving."""
    own_pid = _own_pid() if spare_own_session else None
    held: list[psycopg.Connection] = []
    try:
        _hold_every_free_connection(held)
        _cut_every_other_session(held[0], own_pid)
        _hold_every_free_connection(held)  # the slots the cut sessions freed
        yield
    finally:
        for session in held:
            session.close()


def _cut_every_other_session(admin: psycopg.Connection, own_pid: int | None) -> None:
    """Every session of the test database but the test's own (if any) ends, and is gone on
    return. A session that was still starting when the others were cut (a pool opening a
    connection in the background) is cut at the next round, not waited for: left open, it
    would keep what its start read (a read-only default) for the rest of the run."""
    name = connection.settings_dict["NAME"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid IS DISTINCT FROM %s",
            [name, own_pid],
        ).fetchone()[0]
        if cut == 0:
            return
        time.sleep(0.02)
    raise AssertionError("sessions of the test database kept coming back for 10 s")


@contextmanager
def database_read_only():
    """As after a failover onto a standby: every process's sessions are cut, and the new
    ones they open refuse every write (`cannot execute INSERT in a read-only transaction`).
    On leaving, writes are allowed again and the read-only sessions are cut too, as when
    the primary is back. The test's own session, opened before, stays writable."""
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    own_pid = _own_pid()
    with _admin_connection() as admin:
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        try:
            _cut_every_other_session(admin, own_pid)
            yield
        finally:
            admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
            _cut_every_other_session(admin, own_pid)


def finished_request(public_id: str, *, message: str):
    """The request, with its attempts, once it has finished (30 s at most)."""
    return wait_until(
        lambda: (
            Request.objects.filter(public_id=public_id, finished_at__isnull=False)
            .prefetch_related("attempts")
            .first()
        ),
        timeout=30,
        message=message,
    )
