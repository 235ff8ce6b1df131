"""The worker's broker connection while Redis refuses it: kombu's Redis transport writing no
file.

PostgreSQL, not the broker, is the source of truth (requests_app/engine/recovery.py): a
message the broker loses only waits for a sweeper to publish it again, and a message run twice
meets the claim and does nothing.
"""

from __future__ import annotations

import logging

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
