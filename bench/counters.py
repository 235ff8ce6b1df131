"""One account's accepts per second as PostgreSQL alone can count them: one counter row per
limit, against the counters in stripes that the accept uses (`core/stripes.py`).

    python -m bench.counters [--connections 50] [--seconds 5] [--rounds 2]

Starts a durable embedded PostgreSQL (every commit flushed to disk, as in production) and,
on scratch tables shaped like the accept's, runs from `--connections` connections at once
the accept's one statement for a single account: add to the month's count and the pending
count below their limits, and insert the request. Three variants, alternated:

- `insert only`: the insert without any count, the ceiling of the rest;
- `one row per count`: each count one row, as before stop 28;
- `stripes`: each count in `STRIPES` rows, a stripe with room taken with SKIP LOCKED (the
  SQL is `core.stripes.take_one`'s).

Prints statements per second; `fallbacks` counts the statements that found every stripe
with room held at that moment (the accept then takes its step-by-step path).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from core import stripes
from devstack.servers import EmbeddedPostgres, free_port

LIMIT = 100_000_000  # the counts never refuse: what is measured is the locking
BODY = "x" * 300

SCHEMA = f"""
CREATE TABLE month_row (account_id int PRIMARY KEY, accepted bigint NOT NULL);
CREATE TABLE pending_row (account_id int PRIMARY KEY, pending int NOT NULL);
CREATE TABLE month_stripe (
    id serial PRIMARY KEY, account_id int, stripe int, accepted bigint NOT NULL,
    UNIQUE (account_id, stripe));
CREATE TABLE pending_stripe (
    id serial PRIMARY KEY, account_id int, stripe int, pending int NOT NULL,
    UNIQUE (account_id, stripe));
CREATE TABLE request (id bigserial PRIMARY KEY, account_id int NOT NULL, body text);
INSERT INTO month_row VALUES (1, 0);
INSERT INTO pending_row VALUES (1, 0);
INSERT INTO month_stripe (account_id, stripe, accepted)
    SELECT 1, stripe, 0 FROM generate_series(0, {stripes.STRIPES - 1}) AS stripe;
INSERT INTO pending_stripe (account_id, stripe, pending)
    SELECT 1, stripe, 0 FROM generate_series(0, {stripes.STRIPES - 1}) AS stripe;
"""

INSERT_ONLY = "INSERT INTO request (account_id, body) VALUES (1, %s)"
ONE_ROW = f"""
WITH quota AS (
    UPDATE month_row SET accepted = accepted + 1
    WHERE account_id = 1 AND accepted < {LIMIT} RETURNING account_id
), slot AS (
    UPDATE pending_row SET pending = pending + 1
    WHERE account_id = (SELECT account_id FROM quota) AND pending < {LIMIT}
    RETURNING account_id
)
INSERT INTO request (account_id, body) SELECT (SELECT account_id FROM slot), %s"""
MONTH_STRIPE = stripes.take_one(
    table="month_stripe", column="accepted", match="account_id = 1", limit=str(LIMIT), start="%s"
)
PENDING_STRIPE = stripes.take_one(
    table="pending_stripe",
    column="pending",
    match="account_id = (SELECT account_id FROM quota)",
    limit=str(LIMIT),
    start="%s",
)
STRIPED = f"""
WITH quota AS ({MONTH_STRIPE} RETURNING account_id
), slot AS ({PENDING_STRIPE} RETURNING account_id
)
INSERT INTO request (account_id, body) SELECT (SELECT account_id FROM slot), %s"""

VARIANTS = {
    "insert only": (INSERT_ONLY, lambda: [BODY]),
    "one row per count": (ONE_ROW, lambda: [BODY]),
    "stripes": (STRIPED, lambda: [stripes.start(), stripes.start(), BODY]),
}


def run(url: str, variant: str, *, connections: int, seconds: float) -> tuple[float, int]:
    """Statements per second from `connections` connections, and the fallbacks."""
    sql, params = VARIANTS[variant]
    done = [0] * connections
    fallbacks = [0] * connections
    ready = threading.Barrier(connections + 1)
    stop = threading.Event()

    def one(index: int) -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            ready.wait()
            while not stop.is_set():
                try:
                    connection.execute(sql, params())
                    done[index] += 1
                except psycopg.errors.NotNullViolation:
                    fallbacks[index] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.monotonic()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started), sum(fallbacks)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="reqrun-bench-counters-"))
    server = EmbeddedPostgres(directory=directory, port=free_port(), durable=True)
    try:
        server.start()
        with psycopg.connect(server.url, autocommit=True) as connection:
            connection.execute(SCHEMA)
        print(
            f"one account's accepts counted by PostgreSQL (durable), "
            f"{args.connections} connections, {args.seconds:g} s each, {stripes.STRIPES} stripes"
        )
        for round_number in range(1, args.rounds + 1):
            for variant in VARIANTS:
                rate, fallbacks = run(
                    server.url, variant, connections=args.connections, seconds=args.seconds
                )
                extra = f" · fallbacks {fallbacks:,}" if variant == "stripes" else ""
                print(f"  round {round_number} · {variant:<18} {rate:8,.0f} /s{extra}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
