"""Whether the database's schema is the one this code needs: every migration applied.

A deploy that starts the processes before its `migrate` has finished, or a new database
attached and `migrate` forgotten, would otherwise meet missing tables and columns as
tracebacks: beat exits, the worker fails every task, the web answers 500. Instead, worker
and beat wait here until the schema is migrated, and the web answers 503 (/readyz names
`schema`) meanwhile.

The check reads the `django_migrations` table in autocommit and holds no connection or
lock afterwards, so it never stands in the way of the `migrate` it waits for.
Once migrated, a process never asks again: its code's migrations do not change.
"""

import logging
import time

from django.db import InterfaceError, OperationalError, ProgrammingError, connection
from django.db.migrations.executor import MigrationExecutor

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 3.0

# A relation or column the code names is not there (SQLSTATE undefined_table,
# undefined_column): what a query meets on a schema older than the code.
MISSING_FROM_SCHEMA = ("42P01", "42703")

HOW_TO_FIX = "run `python manage.py migrate`"

# A database that does not answer (core.outages.DATABASE_UNAVAILABLE, which imports this).
DOES_NOT_ANSWER = (OperationalError, InterfaceError)

_pending: int | None = None  # what the last check found; None before one answered


def pending_migrations() -> int:
    """How many of the code's migrations the database has not applied (0 once migrated)."""
    global _pending
    if _pending == 0:
        return 0
    try:
        executor = MigrationExecutor(connection)
        _pending = len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
    finally:
        if not connection.in_atomic_block:
            connection.close()  # back to the pool: no session left open beside migrate
    return _pending


def not_migrated_message(pending: int) -> str:
    return f"the database schema is not migrated ({pending} migrations pending): {HOW_TO_FIX}"


def say_if_not_migrated() -> bool:
    """For the web at start-up: whether every migration is applied (or the database did not
    answer: the probes judge that), and a warning naming the fix if not."""
    try:
        pending = pending_migrations()
    except DOES_NOT_ANSWER:
        return True
    if pending:
        logger.warning(not_migrated_message(pending), extra={"pending_migrations": pending})
    return not pending


def met_unmigrated_schema(error: BaseException) -> bool:
    """Whether `error` is a query meeting a table or column that a pending migration adds,
    as the last check found the schema (no query here: this runs on the error path, in
    async code too)."""
    return (
        isinstance(error, ProgrammingError)
        and getattr(error.__cause__, "sqlstate", None) in MISSING_FROM_SCHEMA
        and bool(_pending)
    )


def wait_until_migrated() -> None:
    """Block until every migration is applied, saying why once at warning and once when
    done. For worker and beat at start-up: a process manager restarting one that exited
    instead would bury the reason in tracebacks. A database that does not answer is not
    waited for here: the process's own handling of outages takes over."""
    waited = False
    while True:
        try:
            pending = pending_migrations()
        except DOES_NOT_ANSWER as error:
            logger.warning(
                "database schema not checked: the database did not answer",
                extra={"exception": type(error).__name__},
            )
            return
        if not pending:
            if waited:
                logger.info("database schema migrated; starting")
            return
        if not waited:
            logger.warning(not_migrated_message(pending), extra={"pending_migrations": pending})
            waited = True
        time.sleep(RECHECK_SECONDS)
