"""Thin Celery tasks: ids in, a service call, nothing else."""

from celery import shared_task

from requests_app.engine import executor, retention
from requests_app.engine import recovery as sweeper


@shared_task(acks_late=True, reject_on_worker_lost=True, time_limit=3600, soft_time_limit=3500)
def execute_request(request_pk: int) -> None:
    executor.execute_request(request_pk)


@shared_task(time_limit=120, soft_time_limit=100)
def sweep_requests() -> None:
    sweeper.sweep()


@shared_task(time_limit=1800, soft_time_limit=1700)
def purge_expired_data() -> None:
    retention.purge_expired_data()
