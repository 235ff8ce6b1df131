"""A worker's warm shutdown (SIGTERM): start no new attempt, let those in flight finish
within a grace period, and leave whatever is still running then to its lease.

Nothing is lost either way: a request a stopping worker did not claim is still queued or
retrying in PostgreSQL and the sweeper publishes it again; an attempt cut off by the end
of the grace period is recovered by the sweeper when its lease runs out.
"""

import logging
import os
import threading

from celery.signals import worker_shutting_down
from django.conf import settings

logger = logging.getLogger(__name__)

_stopping = threading.Event()


def is_stopping() -> bool:
    """True once this worker process has begun to shut down."""
    return _stopping.is_set()


@worker_shutting_down.connect
def _begin(sig=None, how=None, exitcode=None, **kwargs) -> None:
    _stopping.set()
    grace = settings.REQRUN_WORKER_GRACE_SECONDS
    logger.info("worker stopping; attempts in flight may finish", extra={"grace_seconds": grace})
    timer = threading.Timer(grace, _grace_over)
    timer.daemon = True
    timer.start()


def _grace_over() -> None:
    logger.warning("grace period over; attempts still in flight are left to their lease")
    logging.shutdown()
    os._exit(0)
