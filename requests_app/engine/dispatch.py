"""How an accepted request reaches a worker: the `execute_request` message on the broker.

`publish_execute_request` sends the same message `execute_request.delay(pk)` sends, without
Celery's per-publish machinery (routing, settings lookups through Django's settings,
kombu's producer and a new Redis client per publish): on the accept path that machinery
cost more CPU than the rest of the accept's Python. The message is Celery's task protocol 2
as kombu's Redis transport stores it; the queue comes from Celery's own routing, read once
per process. The task itself (`requests_app.tasks`) is declared with the name and time
limits below, so the engine never imports the task module.
"""

import base64
import json
import os
import socket
import uuid
from functools import cache

from celery import current_app

from requests_app.engine.redis_client import client

EXECUTE_REQUEST = "requests_app.tasks.execute_request"
TIME_LIMIT, SOFT_TIME_LIMIT = 3600, 3500

# The body's third part: no callbacks, errbacks, chain or chord.
NO_WORKFLOW = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@cache
def _queue() -> str:
    """The queue Celery routes execute_request to (CELERY_TASK_ROUTES), read once."""
    return current_app.amqp.router.route({}, EXECUTE_REQUEST)["queue"].name


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
                "task": EXECUTE_REQUEST,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [TIME_LIMIT, SOFT_TIME_LIMIT],
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
