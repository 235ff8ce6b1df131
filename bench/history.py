"""`--history N`: the stack measured with N finished requests already in the database, and
the retention purge measured while accepts keep coming.

The history is written by PostgreSQL itself (`INSERT … SELECT` over `generate_series`,
in batches, each request with one successful attempt), into the account measured by the
c=50 and async scenarios: a busy tenant's own history is what its indexes must carry.
The rows are spread evenly over the plan's retention window plus one day, so exactly one
day of them is past the window: that day is what the purge deletes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psycopg

from bench.stack import ROOT, Stack, StackError
from devstack.__main__ import say
from projects.plans import PLANS

SEED_BATCH = 100_000
PURGE_TIMEOUT_SECONDS = 900

# One statement per batch: the requests, then one attempt each from their RETURNING.
SEED = """
WITH tenant AS (
    SELECT k.id AS api_key_id, k.project_id, p.account_id
    FROM projects_apikey k JOIN projects_project p ON p.id = k.project_id
    WHERE k.prefix = %(prefix)s
),
made AS (
    INSERT INTO requests_app_request (
        public_id, account_id, project_id, api_key_id, endpoint, model, stream, body_sha256,
        request_body, idempotency_key, idempotency_slot, status, created_at, started_at,
        finished_at, deadline_at, attempt_count, max_attempts, lease_until, next_attempt_at,
        dispatched_at, cancel_requested, first_byte_at, response_status_code,
        response_headers, response_body, response_expires_at, usage, error, partial,
        next_upstream, upstream_tries, owed_deliveries
    )
    SELECT
        'req_' || lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || substr(md5(g::text || random()::text), 1, 16),
        tenant.account_id, tenant.project_id, tenant.api_key_id, '/v1/chat/completions',
        'gpt-4o-mini', false, md5(g::text) || md5(g::text), NULL, NULL, NULL, 'succeeded', at,
        at, at + interval '800 milliseconds', at + interval '1 hour', 1, 3, NULL, NULL, at,
        false, NULL, 200, '{}'::jsonb, NULL, at + interval '24 hours',
        '{"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}'::jsonb, NULL, false,
        '', 0, 0
    FROM tenant,
        generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
        LATERAL (
            SELECT now() - %(span)s::interval * (1 - g::float8 / %(total)s::float8) AS at
        ) AS moment
    RETURNING id, started_at, finished_at
)
INSERT INTO requests_app_attempt (
    request_id, number, upstream, started_at, finished_at, outcome, status_code, error_code,
    latency_ms, retry_after_ms
)
SELECT id, 1, 'primary', started_at, finished_at, 'success', 200, NULL, 800, NULL FROM made
"""


def key_prefix(api_key: str) -> str:
    """`rr_<prefix>_<secret>` → `<prefix>`."""
    return api_key.split("_")[1]


def seed(stack: Stack, api_key: str, total: int, retention_days: int) -> dict:
    """Write `total` finished requests (and attempts) over `retention_days` + 1 days."""
    began = time.monotonic()
    span = f"{retention_days + 1} days"
    with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
        for first in range(1, total + 1, SEED_BATCH):
            last = min(total, first + SEED_BATCH - 1)
            conn.execute(
                SEED,
                {
                    "prefix": key_prefix(api_key),
                    "first": first,
                    "last": last,
                    "total": total,
                    "span": span,
                },
            )
            say(f"history: {last:,}/{total:,} finished requests written")
        conn.execute("VACUUM ANALYZE requests_app_request")
        conn.execute("VACUUM ANALYZE requests_app_attempt")
        size = conn.execute(
            "SELECT pg_total_relation_size('requests_app_request') "
            "+ pg_total_relation_size('requests_app_attempt')"
        ).fetchone()[0]
    return {
        "requests": total,
        "retention_days": retention_days,
        "seconds": time.monotonic() - began,
        "tables_mb": size / 2**20,
    }


def enterprise_retention_days() -> int:
    """The bench's tenants are on the enterprise plan (bench/stack.py bootstrap)."""
    return next(row[7] for row in PLANS if row[0] == "enterprise")


class LockWaits:
    """Samples PostgreSQL's ungranted locks while the purge runs: a purge that stalls
    accepts by locking shows here, one that only competes for the CPU does not."""

    QUERY = "SELECT locktype, count(*) FROM pg_locks WHERE NOT granted GROUP BY locktype"

    def __init__(self, stack: Stack, interval: float = 0.1) -> None:
        self.url = stack.env["DATABASE_URL"]
        self.interval = interval
        self.samples = 0
        self.waiting_samples = 0
        self.most_waiting = 0
        self.by_type: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-waits", daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(self.QUERY).fetchall()
                self.samples += 1
                waiting = sum(count for _, count in rows)
                if waiting:
                    self.waiting_samples += 1
                    self.most_waiting = max(self.most_waiting, waiting)
                    for locktype, count in rows:
                        self.by_type[locktype] = self.by_type.get(locktype, 0) + count
                self._stop.wait(self.interval)

    def __enter__(self) -> LockWaits:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {
            "samples": self.samples,
            "waiting_samples": self.waiting_samples,
            "most_waiting": self.most_waiting,
            "by_type": self.by_type,
        }


PURGE_SCRIPT = (
    "import json, time, django; django.setup(); "
    "from requests_app.engine.retention import purge_expired_data; "
    "began = time.monotonic(); report = purge_expired_data(); "
    "print(json.dumps({'records': report.records, 'response_bodies': report.response_bodies, "
    "'seconds': time.monotonic() - began}))"
)


def start_purge(stack: Stack) -> subprocess.Popen:
    """The retention purge, as beat's task runs it, in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-c", PURGE_SCRIPT],
        env={**stack.env, "DJANGO_SETTINGS_MODULE": "reqrun.settings"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def finish_purge(process: subprocess.Popen) -> dict:
    try:
        output, _ = process.communicate(timeout=PURGE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise StackError(
            f"the retention purge did not end within {PURGE_TIMEOUT_SECONDS} s"
        ) from None
    if process.returncode:
        raise StackError(f"the retention purge failed with code {process.returncode}")
    return json.loads(output.strip().splitlines()[-1])
