from django.core.cache import cache

from core.tasks import WORKER_HEARTBEAT_KEY, record_worker_heartbeat
from tests.conftest import wait_until


def test_a_task_round_trips_through_a_real_worker(celery_worker):
    cache.delete(WORKER_HEARTBEAT_KEY)

    record_worker_heartbeat.delay()

    wait_until(
        lambda: cache.get(WORKER_HEARTBEAT_KEY), timeout=60, message="the worker never ran the task"
    )
