"""Beat's scheduler: the schedule in PostgreSQL (django-celery-beat), a few tasks run by beat
itself instead of a worker, and one beat leading when several run.

The sweep that rescues lost and due work must not wait behind that very work: in a worker
pool saturated by long upstream calls a queued sweep would not start, and it must not
depend on the broker it recovers from. Tasks named in REQRUN_BEAT_INLINE_TASKS are
therefore run in beat's own process, on schedule, and are never sent to the broker.

A rolling deploy starts the new beat before the old one stops, and an operator may scale
beat to two: only the beat holding the lease (a BeatLease row in PostgreSQL, not Redis: the
sweep must lead while Redis is down; not a session lock: PgBouncer in transaction mode
keeps no session) sends the schedule. The others stand by and take the lease once it runs
out or is released.
"""

import logging
import os
import secrets
import socket
import time

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django_celery_beat.schedulers import DatabaseScheduler

from core import schema
from core.models import BeatLease
from core.outages import database_unavailable

logger = logging.getLogger(__name__)

LEASE = "beat"

# Taken when free or run out, renewed when ours; one statement, so two beats never both
# win. The database's clock decides, so the beats' own clocks may disagree. (The table is
# BeatLease's: a rename fails the tests.)
HOLD_LEASE = """
INSERT INTO core_beatlease (name, holder, expires_at)
VALUES (%(name)s, %(holder)s, clock_timestamp() + make_interval(secs => %(seconds)s))
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
    WHERE core_beatlease.holder = EXCLUDED.holder
       OR core_beatlease.expires_at < clock_timestamp()
RETURNING holder
"""


class Leadership:
    """Whether this beat leads: it holds the lease, renewed well before it runs out.

    While the database does not answer, nobody can take the lease over: the leader goes on
    leading until its lease would have run out (its own clock, counted from before the last
    renewal was sent, so never past what the database holds), then stands by; a standby
    stays one."""

    def __init__(self, *, lease_seconds: float | None = None):
        self.lease_seconds = lease_seconds or settings.REQRUN_BEAT_LEASE_SECONDS
        # The leader renews when a sixth of the lease has gone by (and sleeps no longer);
        # a standby asks again as often, at least once a second.
        self.renew_seconds = self.lease_seconds / 6
        self.retry_seconds = min(1.0, self.renew_seconds)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[-200:]
        self.leads = False
        self._renewed_at = 0.0
        self._said: bool | None = None  # what the database last answered: leads or not
        self._unavailable = False

    def hold(self) -> bool:
        """Take or renew the lease if it is free, run out or ours; True if this beat leads."""
        started = time.monotonic()
        if self.leads and started - self._renewed_at < self.renew_seconds:
            return True
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    HOLD_LEASE,
                    {"name": LEASE, "holder": self.holder, "seconds": self.lease_seconds},
                )
                self.leads = cursor.fetchone() is not None
        except DatabaseError as exc:  # down, restarting, read-only after a failover
            if not database_unavailable(exc):
                raise
            self._database_unavailable(exc, now=started)
            return self.leads
        self._unavailable = False
        if self.leads:
            self._renewed_at = started
        if self.leads != self._said:
            logger.info("beat leads" if self.leads else "another beat leads")
            self._said = self.leads
        return self.leads

    def release(self) -> None:
        """On a clean stop: the lease is free at once for a standby to take."""
        if not self.leads:
            return
        self.leads = False
        try:
            BeatLease.objects.filter(name=LEASE, holder=self.holder).delete()
        except DatabaseError as exc:
            if not database_unavailable(exc):
                raise
            # A standby takes over when the lease runs out instead.
            logger.warning(
                "beat lease not released: database unavailable",
                extra={"exception": type(exc).__name__},
            )

    def _database_unavailable(self, exc: Exception, *, now: float) -> None:
        if not self._unavailable:
            logger.warning(
                "beat lease not renewed: database unavailable",
                extra={"exception": type(exc).__name__},
            )
            self._unavailable = True
        if self.leads and now - self._renewed_at >= self.lease_seconds:
            logger.warning("beat stands by: its lease ran out while the database was unavailable")
            self.leads = False
            self._said = None


class Scheduler(DatabaseScheduler):
    _waiting = False

    def __init__(self, *args, lazy=False, **kwargs):
        self.leadership = Leadership()
        if not lazy:  # the start banner's scheduler reads nothing
            self._wait_until_migrated()
        super().__init__(*args, lazy=lazy, **kwargs)

    @classmethod
    def _wait_until_migrated(cls):
        """Before the schedule is read from the tables `migrate` makes. Beat's SIGTERM
        handler saves the schedule by building the scheduler, so a beat stopped while it
        waits here would build a second one and wait in that: it exits instead."""
        if cls._waiting:
            raise SystemExit()
        cls._waiting = True
        try:
            schema.wait_until_migrated()
        finally:
            cls._waiting = False

    def tick(self, *args, **kwargs):
        """One pass of the schedule if this beat leads; otherwise nothing is sent, and the
        lease is asked for again shortly."""
        led = self.leadership.leads
        close_old_connections()  # one a failed statement left unusable, as sync() does
        if not self.leadership.hold():
            return self.leadership.retry_seconds
        if not led:
            self._read_schedule_again()
        return min(super().tick(*args, **kwargs), self.leadership.renew_seconds)

    def _read_schedule_again(self):
        """A beat that starts to lead reads the schedule as the last leader left it (its last
        runs), rather than what this process read when it started or last led."""
        self._dirty.clear()
        self._initial_read = True
        self._heap = None

    def close(self):
        """On a clean stop the schedule is saved, then the lease freed for a standby."""
        try:
            super().close()
        finally:
            self.leadership.release()

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
