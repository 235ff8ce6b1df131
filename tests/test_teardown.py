"""The suite's own teardown: a transactional test's database flush survives a deadlock.

A transactional test ends by flushing every table with one TRUNCATE. A worker process
still finishing a task the test left behind can hold a lock on one table while it waits
for another that the TRUNCATE already holds; PostgreSQL then aborts one of the two, and
when it picks the flush the test errors at teardown (stop 15's CI failure). The flush is
retried instead (`tests/conftest.py`).
"""

import re
import threading

import psycopg
import pytest
from django.core.management.color import no_style
from django.core.management.sql import sql_flush
from django.db import connection
from django.test import TransactionTestCase

from accounts.models import User
from tests import conftest


def flushed_tables() -> list[str]:
    """The tables the flush truncates, in the order its TRUNCATE locks them."""
    (statement,) = [sql for sql in sql_flush(no_style(), connection) if "TRUNCATE" in sql]
    return re.findall(r'"(\w+)"', statement)


def flush_now() -> None:
    """What pytest-django runs at the end of a transactional test."""

    class Flush(TransactionTestCase):
        databases = {"default"}

        def test_nothing(self):
            pass

    Flush("test_nothing")._fixture_teardown()


@pytest.mark.timeout(60)
def test_the_flush_is_retried_when_postgres_picks_it_in_a_deadlock(transactional_db):
    User.objects.create(email="left-behind@example.com")
    tables = flushed_tables()
    first, last = tables[0], tables[-1]
    locked = threading.Event()
    granted = []

    def other_session():
        # Hold the table the TRUNCATE locks last, wait until it waits for us, then ask for
        # the one it locked first: a cycle, which the TRUNCATE (waiting longer) detects.
        url = conftest.test_database_url()
        with psycopg.connect(url) as other, psycopg.connect(url, autocommit=True) as watcher:
            other.execute(f'LOCK TABLE "{last}" IN ROW EXCLUSIVE MODE')
            locked.set()
            conftest.wait_until(
                lambda: watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE 'TRUNCATE%'"
                ).fetchone()[0],
                timeout=20,
                message="the flush never waited for the other session",
            )
            other.execute(f'LOCK TABLE "{first}" IN ROW EXCLUSIVE MODE')
            granted.append(True)
            other.rollback()

    thread = threading.Thread(target=other_session)
    thread.start()
    locked.wait(10)
    try:
        flush_now()
    finally:
        thread.join(30)
    # While the other session held the last table, the first one could only come free by
    # PostgreSQL aborting the TRUNCATE: the fault happened, and the flush got past it.
    assert granted == [True]
    assert not User.objects.filter(email="left-behind@example.com").exists()
