"""Operational tasks that serve every app: the worker heartbeat /readyz reads."""

import time

from celery import shared_task
from django.core.cache import cache

WORKER_HEARTBEAT_KEY = "worker-heartbeat"


@shared_task(time_limit=30, soft_time_limit=20)
def record_worker_heartbeat() -> None:
    """Beat runs this every minute; /readyz reports how long ago a worker last ran it."""
    cache.set(WORKER_HEARTBEAT_KEY, time.time(), timeout=None)
