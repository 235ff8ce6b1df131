"""The worker's broker connection while Redis refuses it: kombu's Redis transport writing no
file, and the consumer's reconnects paced instead of several a second.

PostgreSQL, not the broker, is the source of truth (requests_app/engine/recovery.py): a
message the broker loses only waits for a sweeper to publish it again, and a message run twice
meets the claim and does nothing.
"""

from __future__ import annotations

import logging
from time import monotonic, sleep

from celery import bootsteps
from celery.worker.state import maybe_shutdown
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

logger = logging.getLogger(__name__)


class QoS(virtual.QoS):
    """kombu's bookkeeping of the messages a channel delivered and that are not acked yet
    (without ack emulation). When the channel closes (a reconnect, a shutdown) kombu puts them
    back on their queue; those Redis refuses (out of memory, read-only, down) it would log as
    errors and write, with their task's arguments, to a file in the temporary directory that
    nothing reads back. Here they are a warning and are dropped: the attempts they started run
    on in this worker, and every request not finished is in PostgreSQL for the sweeper."""

    def restore_unacked(self):
        unrestored = super().restore_unacked()
        if unrestored:
            first_error = unrestored[0][0]
            logger.warning(
                "unacknowledged messages not put back on the queue",
                extra={"count": len(unrestored), "exception": type(first_error).__name__},
            )
        return []


class Channel(kombu_redis.Channel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.ack_emulation:  # kombu's Redis channel takes virtual.QoS then
            self.QoS = QoS


class Transport(kombu_redis.Transport):
    """kombu's Redis transport (CELERY_BROKER_TRANSPORT), with the channel above."""

    Channel = Channel


class RestartBackoff:
    """Paces the consumer's restarts, in place of Celery's limit (billiard's restart_state: five
    restarts a second, then `Frequent restarts detected`, critical, and a 1 s pause). A Redis
    that takes the connection but refuses the consumer's commands (a read-only replica after a
    failover) makes it restart at once, again and again, each time with a warning: here each
    restart soon after the last waits 1, 2, 4, then 8 s, so the warnings come that often and
    the consumer is back within 8 s of Redis taking writes. A restart after the consumer ran a
    minute waits nothing.

    Celery calls `step()` before each start of the consumer but its first restart."""

    FIRST_WAIT = 1.0
    LONGEST_WAIT = 8.0
    STEADY = 60.0

    def __init__(self) -> None:
        self.wait = 0.0
        self.started_at: float | None = None

    def step(self) -> None:
        now = monotonic()
        if self.started_at is None or now - self.started_at >= self.STEADY:
            self.wait = 0.0
        else:
            self.wait = min(max(self.wait * 2, self.FIRST_WAIT), self.LONGEST_WAIT)
        until = now + self.wait
        while (left := until - monotonic()) > 0:
            maybe_shutdown()  # a warm or cold shutdown asked meanwhile ends the wait
            sleep(min(left, 0.5))
        self.started_at = monotonic()


class PacedRestarts(bootsteps.Step):
    """A consumer bootstep that puts RestartBackoff in the consumer's `_restart_state`."""

    def __init__(self, parent, **kwargs):
        parent._restart_state = RestartBackoff()
        super().__init__(parent, **kwargs)
