"""The accept path publishes execute_request itself: the message must be Celery's own."""

import json
import uuid

from requests_app.engine.dispatch import execute_request_message
from requests_app.engine.redis_client import client
from requests_app.tasks import execute_request

# Different for every message, whoever publishes it; the queue is where it went.
PER_MESSAGE = {
    "headers": ("id", "root_id", "origin"),
    "properties": ("correlation_id", "reply_to", "delivery_tag"),
}


def _comparable(message: dict) -> dict:
    for part, names in PER_MESSAGE.items():
        for name in names:
            message[part].pop(name)
    message["properties"]["delivery_info"].pop("routing_key")
    return message


def test_the_published_message_is_the_one_celery_sends():
    queue = f"test-publish-{uuid.uuid4().hex}"
    execute_request.apply_async(args=(4242,), queue=queue)  # as delay() sends it
    sent_by_celery = json.loads(client().rpop(queue))

    ours = json.loads(execute_request_message(4242))

    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": "requests"}
    assert (
        ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    )
    assert _comparable(ours) == _comparable(sent_by_celery)


def test_each_message_has_its_own_task_id_and_delivery_tag():
    first, second = (json.loads(execute_request_message(1)) for _ in range(2))
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
