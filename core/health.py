"""Liveness and readiness probes for load balancers and orchestrators."""

import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse

from core import heartbeats, schema
from core.postgresql.base import closed_by_server

# Well under the pool's own timeout (DB_POOL_TIMEOUT, 30 s by default): a probe that waits
# that long is cut off by the load balancer, and holds a thread while it waits.
POSTGRES_TIMEOUT_SECONDS = 2.0

READY_PROBE_KEY = "reqrun:readyz"

logger = logging.getLogger(__name__)

# What this process's last probe found down (nothing: ready). A load balancer probes every
# few seconds, so the log says when readiness changes, not what every probe found.
_last_down: tuple[str, ...] = ()


# A standby, or a database set default_transaction_read_only (as a failover may leave one),
# answers reads but refuses every request's record: not ready. Asked in the one query the
# probe sends anyway.
WRITABLE = "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)"


def postgres_state() -> str:
    """`ok` when the process gets a connection from its pool in time and the database will
    take writes on it; `read_only` when it will not; `down` when none answers.

    The probe draws from the pool itself, past the backend's check, so it drops the
    connections a restart cut as the backend does: one of them is not an outage."""
    pool = connection.pool  # settings always configure one
    try:
        pool.open()  # as Django opens it on first use
        for _ in range(pool.max_size + 1):
            with pool.connection(timeout=POSTGRES_TIMEOUT_SECONDS) as conn:
                if closed_by_server(conn):
                    conn.close()  # back to the pool closed: discarded and replaced
                    continue
                (writable,) = conn.execute(WRITABLE).fetchone()
                return "ok" if writable else "read_only"
    except Exception:
        return "down"
    return "down"


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    """200 when PostgreSQL answers, Redis takes a write, and the sweeper and a worker ran
    recently.

    503 names what is down: `postgres`, `postgres_read_only` (it answers but refuses
    writes: a standby, or a failover left it read-only), `schema` (migrations pending, with
    `pending_migrations`: `manage.py migrate` has not run or not finished), `redis`,
    `sweeper` (beat or the sweep is not running, so scheduled retries and lost requests wait
    forever) or `worker`.
    """
    postgres = postgres_state()
    down = {"ok": [], "read_only": ["postgres_read_only"]}.get(postgres, ["postgres"])
    pending = {}
    if postgres == "ok":
        try:
            # Asks the database only until it first finds every migration applied.
            if count := schema.pending_migrations():
                down.append("schema")
                pending["pending_migrations"] = count
        except DatabaseError:
            down.append("postgres")
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1
        )
        # A write, not PING: a full Redis (noeviction) and a read-only replica answer PING
        # yet refuse every request ReqRun would take.
        client.set(READY_PROBE_KEY, "1", ex=60)
        client.close()
    except Exception:
        down.append("redis")
    if down:
        return _answer(down, pending)
    beats = heartbeats.current()
    ages = {
        f"{beat.name}_last_seen_seconds_ago": None
        if beat.age_seconds is None
        else round(beat.age_seconds)
        for beat in beats
    }
    return _answer([beat.name for beat in beats if beat.stale], ages)


def _answer(down: list[str], details: dict) -> JsonResponse:
    """The probe's answer, and one log line when readiness changes: a warning naming what
    is down, or "ready again". Django would log every 503 probe at ERROR."""
    global _last_down
    if tuple(down) != _last_down:
        if down:
            logger.warning("not ready", extra={"down": ",".join(down)})
        else:
            logger.info("ready again")
        _last_down = tuple(down)
    if not down:
        return JsonResponse({"status": "ok", **details})
    response = JsonResponse({"status": "unavailable", "down": down, **details}, status=503)
    response._has_been_logged = True  # above, once per change
    return response
