"""Two beats at once (a rolling deploy, beat scaled to 2): one leads and sends the schedule,
the other stands by and takes over when the leader dies or stops (core/beat.py)."""

import logging
import time

import pytest
from django.core.cache import cache
from django.db import connection

from core import heartbeats
from core.beat import Leadership, Scheduler
from reqrun.celery import app
from tests.conftest import BeatProcess, wait_until

SWEEP_SENT = "Sending due task sweep-requests"
STANDING_BY = "another beat leads"


def test_a_killed_leader_is_replaced_before_readyz_calls_the_sweeper_stale(settings):
    # The last sweep before the kill, the lease running out, the standby's next ask: a
    # takeover slower than /readyz's rule would take every web out of its load balancer.
    standby = Leadership()
    takeover = (
        settings.REQRUN_SWEEP_INTERVAL_SECONDS + standby.lease_seconds + standby.retry_seconds
    )

    assert takeover < heartbeats.stale_after(heartbeats.SWEEPER)


def test_only_one_beat_leads(db):
    first, second = Leadership(lease_seconds=30), Leadership(lease_seconds=30)

    assert first.hold()
    assert not second.hold()
    assert first.hold()  # renewed, still its own
    assert not second.hold()


def test_a_standby_takes_over_once_the_leaders_lease_runs_out(db):
    # Long enough that the standby's first ask comes well inside it, however loaded the
    # machine; short enough to wait out.
    leader, standby = Leadership(lease_seconds=1.5), Leadership(lease_seconds=1.5)
    held_since = time.monotonic()
    assert leader.hold()
    assert not standby.hold()

    # The leader died: nothing renews its lease, and the standby asks until it runs out.
    wait_until(standby.hold, timeout=5, interval=0.02, message="the standby never took over")

    assert time.monotonic() - held_since >= 1.5  # not before the lease ran out
    assert not leader.hold()  # back, it finds the lease taken and stands by


def test_a_released_lease_is_taken_at_once(db):
    leader, standby = Leadership(lease_seconds=30), Leadership(lease_seconds=30)
    assert leader.hold()
    assert not standby.hold()

    leader.release()

    assert standby.hold()


def test_a_leader_on_a_read_only_database_keeps_its_lease_until_it_runs_out(
    transactional_db, caplog
):
    leader = Leadership(lease_seconds=2.4)
    renewed_since = time.monotonic()
    assert leader.hold()
    # Time must pass: only past the renewal point (a sixth of the lease, 0.4 s) does the
    # next hold write, and meet the read-only database; the lease lasts long enough past
    # it that this hold still comes well inside it, however loaded the machine.
    time.sleep(0.45)
    with connection.cursor() as cursor:
        cursor.execute("SET default_transaction_read_only = on")  # a failover's replica
    try:
        with caplog.at_level(logging.WARNING, logger="core.beat"):
            still_leads = leader.hold()
            wait_until(
                lambda: not leader.hold(),
                timeout=5,
                interval=0.02,
                message="the leader never stood by",
            )
            stood_by_after = time.monotonic() - renewed_since
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET default_transaction_read_only")

    assert still_leads
    assert stood_by_after >= 2.4  # it led until its lease ran out
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warnings] == [
        "beat lease not renewed: database unavailable",
        "beat stands by: its lease ran out while the database was unavailable",
    ]


def test_a_standby_says_once_that_another_beat_leads(db, caplog):
    leader, standby = Leadership(lease_seconds=30), Leadership(lease_seconds=30)
    leader.hold()

    with caplog.at_level(logging.INFO, logger="core.beat"):
        caplog.clear()
        for _ in range(3):
            standby.hold()

    assert [r.getMessage() for r in caplog.records] == [STANDING_BY]


@pytest.mark.timeout(90)
def test_a_second_beat_runs_no_sweep_until_the_leader_is_killed(transactional_db, tmp_path):
    lease = {"REQRUN_BEAT_LEASE_SECONDS": "2", "REQRUN_SWEEP_INTERVAL_SECONDS": "0.5"}
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = BeatProcess(extra_env=lease, log_path=first_log).start()
    second = None
    try:
        wait_until(lambda: SWEEP_SENT in first_log.read_text(), timeout=30, message="no sweep")
        second = BeatProcess(extra_env=lease, log_path=second_log).start()
        wait_until(
            lambda: STANDING_BY in second_log.read_text(),
            timeout=30,
            message="the second beat never said it stands by",
        )
        # The leader sweeps on (every 0.5 s): the sweeper's heartbeat is recorded after the
        # standby began (beat writes its line for an entry once a minute, so count sweeps so).
        standing_by_since = time.time()
        wait_until(
            lambda: (sweeper_heartbeat() or 0) > standing_by_since + 1.5,
            timeout=10,
            message="the leader stopped sweeping",
        )
        assert SWEEP_SENT not in second_log.read_text()

        first.kill()

        wait_until(
            lambda: SWEEP_SENT in second_log.read_text(),
            timeout=2 + 5,
            message="the standby did not take over within the lease",
        )
    finally:
        first.stop()
        if second:
            second.stop()


def sweeper_heartbeat() -> float | None:
    """When a sweep last finished (Unix time), as /readyz reads it."""
    return cache.get(heartbeats.key(heartbeats.SWEEPER))


def test_a_beat_stopping_cleanly_frees_the_lease_for_the_standby(transactional_db):
    stopping, standby = Scheduler(app=app), Leadership()
    assert stopping.leadership.hold()
    assert not standby.hold()

    stopping.close()  # what beat does on SIGTERM, after its last sync

    assert standby.hold()
