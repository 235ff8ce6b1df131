"""Counters split into stripes, so the transactions that add to one do not queue at one row.

An account's limits (its accepts this month, its unfinished requests) were each one
counter row. Every accept updated both rows and held their locks until its commit was on
disk, so one busy account's accepts, and the conclusions that give pending slots back,
ran one flush after another: 2,000-4,700 accepts a second for one account, whatever the
server (`python -m bench.counters`, bench/README.md stop 28). Split into `STRIPES` rows, an
accept takes a unit from any stripe that has room and that no other transaction holds,
and the commits share their flushes (5,000-9,500 a second in the same run). 64 stripes
leave one free for almost every accept of 50 at once; 32 left none for most of them.

The limit stays exact. Stripe `k` may count up to its share of the limit,
`(limit + STRIPES - 1 - k) / STRIPES` in integer division; the shares add up to the limit,
and each stripe is checked and added to under its row lock, so the sum of the stripes
never passes the limit. Units may be given back to any stripe (one can go below zero):
the sum is what counts, and while it is below the limit at least one stripe is below its
share, so a call is refused only when the count, as read at that moment, is at the limit.

`STRIPES` is also in the migrations that made each table's rows: changing it needs a
migration that adds (or folds) the rows of every account.
"""

import random

STRIPES = 64


def take_one(*, table: str, column: str, match: str, limit: str, start: str | None) -> str:
    """SQL that adds one to `column` of a stripe among the rows `match` selects whose
    count is below its share of `limit`; it updates no row when none has room. `match`,
    `limit` and `start` are SQL (placeholders, subqueries).

    With `start` (a value from `start()`), the search begins at that stripe and skips the
    stripes other transactions hold, so it never waits. Without it, it waits for a held
    stripe, searching in stripe order: a row it waited for and found full stays locked
    until its transaction ends, so two searches that waited in different orders could each
    hold the row the other waits for.

    The caller adds `RETURNING ...`."""
    if start is None:
        order, lock = "stripe", "FOR UPDATE"
    else:
        order, lock = f"(stripe + {start}) %% {STRIPES}", "FOR UPDATE SKIP LOCKED"
    return f"""
    UPDATE {table} SET {column} = {column} + 1
    WHERE id = (
        SELECT id FROM {table}
        WHERE {match} AND {column} < ({limit} + {STRIPES - 1} - stripe) / {STRIPES}
        ORDER BY {order}
        LIMIT 1 {lock}
    )"""  # noqa: S608 - names from the callers' models, values bound


def start() -> int:
    """Where a search for a stripe with room begins: anywhere, so concurrent ones spread."""
    return random.randrange(STRIPES)  # noqa: S311 - spreading load, not a secret


def create_rows(*, table: str, key_columns: str, key_values: str, column: str) -> str:
    """SQL that makes the `STRIPES` rows of one key (`key_values` are placeholders for
    `key_columns`), each counting 0; rows that exist are left as they are."""
    return f"""
    INSERT INTO {table} ({key_columns}, stripe, {column})
    SELECT {key_values}, stripe, 0 FROM generate_series(0, {STRIPES - 1}) AS stripe
    ON CONFLICT DO NOTHING"""  # noqa: S608 - names from the callers' models
