"""Liveness and readiness probes for load balancers and orchestrators."""

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from core import heartbeats

# Well under the pool's own timeout (DB_POOL_TIMEOUT, 30 s by default): a probe that waits
# that long is cut off by the load balancer, and holds a thread while it waits.
POSTGRES_TIMEOUT_SECONDS = 2.0


def postgres_answers() -> bool:
    """Whether the process can get a connection from its pool, and it answers, in time."""
    pool = connection.pool  # settings always configure one
    try:
        pool.open()  # as Django opens it on first use
        with pool.connection(timeout=POSTGRES_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
    except Exception:
        return False
    return True


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    """200 when PostgreSQL and Redis answer and the sweeper and a worker ran recently.

    503 names what is down: `postgres`, `redis`, `sweeper` (beat or the sweep is not
    running, so scheduled retries and lost requests wait forever) or `worker`.
    """
    down = [] if postgres_answers() else ["postgres"]
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1
        )
        client.ping()
        client.close()
    except Exception:
        down.append("redis")
    if down:
        return JsonResponse({"status": "unavailable", "down": down}, status=503)
    beats = heartbeats.current()
    ages = {
        f"{beat.name}_last_seen_seconds_ago": None
        if beat.age_seconds is None
        else round(beat.age_seconds)
        for beat in beats
    }
    down = [beat.name for beat in beats if beat.stale]
    if down:
        return JsonResponse({"status": "unavailable", "down": down, **ages}, status=503)
    return JsonResponse({"status": "ok", **ages})
