"""Thin Celery tasks: ids in, a service call, nothing else.

`publish_execute_request` sends the same message `execute_request.delay(pk)` sends, without
Celery's per-publish machinery (routing, settings lookups through Django's settings,
kombu's producer and a new Redis client per publish): on the accept path that machinery
cost more CPU than the rest of the accept's Python. The message is Celery's task protocol 2
as kombu's Redis transport stores it; the queue and time limits come from Celery's own
configuration, read once per process.
"""

import base64
import json
import os
import socket
import uuid
from functools import cache

from celery import shared_task

from requests_app.engine import executor, retention
from requests_app.engine import recovery as sweeper
from requests_app.engine.redis_client import client


@shared_task(acks_late=True, reject_on_worker_lost=True, time_limit=3600, soft_time_limit=3500)
def execute_request(request_pk: int) -> None:
    executor.execute_request(request_pk)


@shared_task(time_limit=120, soft_time_limit=100)
def sweep_requests() -> None:
    sweeper.sweep()


@shared_task(time_limit=1800, soft_time_limit=1700)
def purge_expired_data() -> None:
    retention.purge_expired_data()


# The body's third part: no callbacks, errbacks, chain or chord.
NO_WORKFLOW = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@cache
def _queue() -> str:
    """The queue Celery routes execute_request to (CELERY_TASK_ROUTES), read once."""
    return execute_request.app.amqp.router.route({}, execute_request.name)["queue"].name


def execute_request_message(request_pk: int) -> bytes:
    """The message `execute_request.delay(request_pk)` puts on the broker."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[request_pk], {}, NO_WORKFLOW]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": execute_request.name,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [execute_request.time_limit, execute_request.soft_time_limit],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr((request_pk,)),
                "kwargsrepr": "{}",
                "origin": f"gen{os.getpid()}@{socket.gethostname()}",
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": None,
                "delivery_mode": 2,
                # Celery publishes through the default exchange, the queue's name as key.
                "delivery_info": {"exchange": "", "routing_key": _queue()},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def publish_execute_request(*request_pks: int) -> None:
    """`execute_request.delay(pk)` for each of `request_pks`, all in one LPUSH on the
    engine's Redis client; workers take them in the order given."""
    if request_pks:
        client().lpush(_queue(), *(execute_request_message(pk) for pk in request_pks))


def oldest_waiting_request() -> int | None:
    """The request named by the message that has waited longest in execute_request's queue;
    None when the queue is empty. Publishers push at the head and workers pop at the tail
    (kombu's Redis transport: LPUSH, BRPOP), so messages leave oldest first."""
    message = client().lindex(_queue(), -1)
    if message is None:
        return None
    try:
        body = base64.b64decode(json.loads(message)["body"])
        return int(json.loads(body)[0][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None  # not a message of ours: nothing to learn from it
