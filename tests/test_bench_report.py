"""`make bench` says whether its PostgreSQL waited for the disk: figures taken on a server
that skips the flushes flatter a durable gateway (bench/README.md, stop 27)."""

import pytest

from bench.report import durability

ON = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@pytest.mark.parametrize(
    ("database", "said"),
    [
        (ON, "PostgreSQL flushes each commit to disk"),
        (
            {**ON, "fsync": "off", "synchronous_commit": "off"},
            "PostgreSQL NOT durable (fsync=off, synchronous_commit=off): figures flatter than "
            "production",
        ),
        (None, "PostgreSQL durability not recorded (runs before stop 27 skipped the flushes)"),
    ],
)
def test_a_run_says_whether_its_database_flushed_each_commit(database, said):
    results = {} if database is None else {"database": database}
    assert durability(results) == said
