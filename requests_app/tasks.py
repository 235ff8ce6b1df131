"""Thin Celery tasks: ids in, a service call, nothing else.

Accepted requests are not sent with `execute_request.delay()`: the engine publishes the
same message itself (`requests_app.engine.dispatch`), under the name and time limits
declared there.
"""

from celery import shared_task

from requests_app.engine import dispatch, executor, retention
from requests_app.engine import recovery as sweeper


@shared_task(
    name=dispatch.EXECUTE_REQUEST,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=dispatch.TIME_LIMIT,
    soft_time_limit=dispatch.SOFT_TIME_LIMIT,
)
def execute_request(request_pk: int) -> None:
    executor.execute_request(request_pk)


@shared_task(time_limit=120, soft_time_limit=100)
def sweep_requests() -> None:
    sweeper.sweep()


@shared_task(time_limit=1800, soft_time_limit=1700)
def purge_expired_data() -> None:
    retention.purge_expired_data()
