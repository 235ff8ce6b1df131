"""The Celery application: configured from Django settings (CELERY_*), tasks autodiscovered."""

import os
from functools import partial

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_ready,
    worker_shutting_down,
)

from core import collector, logs, schema
from core.broker import PacedRestarts
from core.postgresql.pool import callers_wait_for_the_database
from core.watchdog import CanaryConsumer, stop_watchdog
from privacy import key_ring

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reqrun.settings")

app = Celery("reqrun")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A worker whose consumer is gone exits to be restarted (core/watchdog.py).
app.steps["consumer"].add(CanaryConsumer)
# While Redis refuses the consumer, its restarts back off rather than run several a second.
app.steps["consumer"].add(PacedRestarts)
worker_shutting_down.connect(stop_watchdog)
# Worker and beat log through Django's LOGGING; a task's lines name the task and, for a
# request's run, its pk (core/logs.py).
setup_logging.connect(logs.configure_celery_logging)
celeryd_init.connect(logs.prepare_worker)
celeryd_after_setup.connect(logs.announce_worker)
task_prerun.connect(
    partial(logs.bind_task, request_task="requests_app.tasks.execute_request"), weak=False
)
task_postrun.connect(logs.unbind_task)
# A worker started before `migrate` has run waits for it before it consumes anything.
worker_init.connect(lambda **_: schema.wait_until_migrated(), weak=False)
# A worker's tasks wait out PostgreSQL refusing connections rather than fail at once.
worker_init.connect(callers_wait_for_the_database)
# A worker whose REQRUN_ENCRYPTION_KEYS cannot read what is stored does not start.
worker_init.connect(key_ring.stop_a_worker_that_cannot_read)
# Once the worker consumes, what start-up made is frozen out of the collector's walks.
worker_ready.connect(lambda **_: collector.settle(), weak=False)
