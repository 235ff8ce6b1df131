"""The Celery application: configured from Django settings (CELERY_*), tasks autodiscovered."""

import os

from celery import Celery
from celery.signals import worker_shutting_down

from core.watchdog import CanaryConsumer, stop_watchdog

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reqrun.settings")

app = Celery("reqrun")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A worker whose consumer is gone exits to be restarted (core/watchdog.py).
app.steps["consumer"].add(CanaryConsumer)
worker_shutting_down.connect(stop_watchdog)
