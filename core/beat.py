"""Beat's scheduler: the schedule in PostgreSQL (django-celery-beat), and a few tasks run by
beat itself instead of a worker.

The sweep that rescues lost and due work must not wait behind that very work: in a worker
pool saturated by long upstream calls a queued sweep would not start, and it must not
depend on the broker it recovers from. Tasks named in REQRUN_BEAT_INLINE_TASKS are
therefore run in beat's own process, on schedule, and are never sent to the broker.
"""

import logging

from django.conf import settings
from django.db import close_old_connections
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)


class Scheduler(DatabaseScheduler):
    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if entry.task not in settings.REQRUN_BEAT_INLINE_TASKS:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        try:
            # apply() runs the task here and records a failure in its result, never raises.
            result = self.app.tasks[entry.task].apply(args=entry.args, kwargs=entry.kwargs)
        finally:
            close_old_connections()
        if result.failed():
            logger.error("task run by beat failed", extra={"task": entry.task})
        return result
