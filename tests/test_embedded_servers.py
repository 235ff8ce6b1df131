"""The embedded PostgreSQL is as durable as production wherever its data is kept or measured
(`make run`, `make bench`, `make chaos`); only the suite's throw-away server skips the
flushes to disk. A benchmark of a durable gateway on a database that acknowledges commits
before they reach the disk would flatter every figure (bench/README.md, stop 27)."""

from contextlib import ExitStack

import psycopg
import pytest
from django.db import connection

from devstack.__main__ import start_servers
from devstack.servers import free_port

DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")


def durability_of(conn: psycopg.Connection) -> dict[str, str]:
    return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in DURABILITY}


def test_a_kept_embedded_postgres_flushes_every_commit(tmp_path, monkeypatch):
    # As `make run` and `make bench` start it: no server named by the environment.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with ExitStack() as stack:
        env = start_servers(stack, tmp_path, free_port(), free_port())
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            assert durability_of(conn) == dict.fromkeys(DURABILITY, "on")


@pytest.mark.django_db
def test_the_suites_throw_away_postgres_skips_the_flushes():
    with connection.cursor() as cursor:
        cursor.execute("SHOW fsync")
        assert cursor.fetchone()[0] == "off"
