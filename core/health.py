"""Liveness and readiness probes for load balancers and orchestrators."""

import time

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse

from core.tasks import WORKER_HEARTBEAT_KEY


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    down = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        down.append("postgres")
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
    heartbeat = cache.get(WORKER_HEARTBEAT_KEY)
    worker_seen = round(time.time() - heartbeat) if heartbeat else None
    return JsonResponse({"status": "ok", "worker_last_seen_seconds_ago": worker_seen})
