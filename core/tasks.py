"""Operational tasks that serve every app: the worker heartbeat /readyz reads."""

from celery import shared_task

from core import heartbeats

WORKER_HEARTBEAT_KEY = heartbeats.key(heartbeats.WORKER)


@shared_task(time_limit=30, soft_time_limit=20)
def record_worker_heartbeat() -> None:
    """Beat runs this every minute through the shared queue: some worker is taking tasks."""
    heartbeats.record(heartbeats.WORKER)
