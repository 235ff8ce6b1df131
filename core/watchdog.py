"""A worker that has stopped consuming ends its own process, so the process manager restarts it.

After a Redis loss a Celery worker can stay alive without consuming anything (kombu's restore
of unacked messages failing inside the consumer is one known way). ReqRun does not rely on
that never happening: every REQRUN_WATCHDOG_INTERVAL_SECONDS a thread in the worker publishes
a tiny canary message to a queue only this process consumes. The canary is read by a consumer
on the worker's own broker connection and event loop (a Celery consumer bootstep), not by the
task pool, so a worker busy with long requests still answers it. A canary that was published
but not consumed within REQRUN_WATCHDOG_TIMEOUT_SECONDS means the consumer is gone: the
watchdog logs why and exits the process with os._exit. Requests it held are not lost: their
messages are acked late and the sweeper re-dispatches whatever was claimed or queued.

Each consumed canary also records the worker heartbeat that /readyz reads (core.heartbeats).
While Redis is down the canaries cannot be published; that is the broker's reconnect loop's
business, and the watchdog only judges canaries that reached Redis.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

from celery import bootsteps
from kombu import Consumer, Exchange, Queue

logger = logging.getLogger(__name__)

EXIT_CODE = 70  # EX_SOFTWARE: the process manager should start a new worker


class Watchdog:
    """The canary's sender and judge; one per worker process."""

    def __init__(self, *, app, hostname: str, interval: float, timeout: float):
        self.app = app
        self.interval = interval
        self.timeout = timeout
        # Our own queue, not Celery's per-node direct queue: two workers started with the
        # same node name on one host would share that one and answer each other's canaries.
        name = f"reqrun.watchdog.{hostname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.queue = Queue(
            name, Exchange(""), routing_key=name, durable=False, auto_delete=True, no_ack=True
        )
        self._lock = threading.Lock()
        self._last_answer = time.monotonic()
        self._unanswered_since: float | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reqrun-watchdog", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stopped.is_set():
            self._thread.start()
            logger.info(
                "watchdog started",
                extra={"queue": self.queue.name, "timeout": self.timeout},
            )

    def stop(self) -> None:
        """On shutdown: the consumer stops on purpose, so silence no longer means death."""
        self._stopped.set()

    def on_canary(self, body, message) -> None:
        """Runs in the consumer's event loop: it is alive and reading from Redis."""
        from core import heartbeats

        with self._lock:
            self._last_answer = time.monotonic()
            self._unanswered_since = None
        try:
            heartbeats.record(heartbeats.WORKER)
        except Exception:
            logger.warning("worker heartbeat not recorded", exc_info=True)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.check()
            self.send_canary()

    def send_canary(self) -> None:
        sent_at = time.monotonic()
        try:
            with self.app.producer_pool.acquire(block=True, timeout=5) as producer:
                producer.publish(
                    {"sent": time.time()},
                    exchange="",
                    routing_key=self.queue.name,
                    declare=[self.queue],
                    serializer="json",
                    retry=True,
                    retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 1},
                )
        except Exception as error:
            # Redis unreachable: nothing to judge until a canary gets through.
            logger.warning("watchdog canary not sent", extra={"error": repr(error)})
            return
        with self._lock:
            if self._unanswered_since is None and self._last_answer < sent_at:
                self._unanswered_since = sent_at

    def check(self) -> None:
        with self._lock:
            since = self._unanswered_since
        if since is None or self._stopped.is_set():
            return
        waited = time.monotonic() - since
        if waited > self.timeout:
            logger.critical(
                "worker stopped consuming: a watchdog canary went unread for longer than "
                "REQRUN_WATCHDOG_TIMEOUT_SECONDS; exiting so the process manager starts a "
                "fresh worker",
                extra={"queue": self.queue.name, "waited_seconds": round(waited)},
            )
            logging.shutdown()
            os._exit(EXIT_CODE)


_watchdog: Watchdog | None = None


class CanaryConsumer(bootsteps.ConsumerStep):
    """Consumer bootstep: reads this worker's canaries and starts the watchdog thread.

    Started again with each new broker connection, so the canary queue is declared anew
    after Redis comes back empty.
    """

    def __init__(self, c, **kwargs):
        global _watchdog
        super().__init__(c, **kwargs)
        if _watchdog is None:
            from django.conf import settings

            _watchdog = Watchdog(
                app=c.app,
                hostname=c.hostname,
                interval=settings.REQRUN_WATCHDOG_INTERVAL_SECONDS,
                timeout=settings.REQRUN_WATCHDOG_TIMEOUT_SECONDS,
            )
        self.watchdog = _watchdog

    def get_consumers(self, channel):
        return [
            Consumer(
                channel,
                queues=[self.watchdog.queue],
                callbacks=[self.watchdog.on_canary],
                accept=["json"],
                no_ack=True,
            )
        ]

    def start(self, c):
        super().start(c)
        self.watchdog.start()

    def shutdown(self, c):
        self.watchdog.stop()
        super().shutdown(c)


def stop_watchdog(**kwargs) -> None:
    """worker_shutting_down: a warm shutdown stops consuming before its tasks finish."""
    if _watchdog is not None:
        _watchdog.stop()
