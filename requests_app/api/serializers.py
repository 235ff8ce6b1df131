"""The request object of the API, exactly as PRODUCT §3 shapes it."""

import json

from core import encryption
from requests_app.models import Attempt, Request


def _timestamp(value) -> int | None:
    return int(value.timestamp()) if value else None


def attempt_object(attempt: Attempt) -> dict:
    return {
        "number": attempt.number,
        "started_at": _timestamp(attempt.started_at),
        "finished_at": _timestamp(attempt.finished_at),
        "outcome": attempt.outcome or None,
        "status_code": attempt.status_code,
        "error_code": attempt.error_code,
        "latency_ms": attempt.latency_ms,
        "retry_after_ms": attempt.retry_after_ms,
    }


def response_object(request: Request) -> dict | None:
    if request.response_body is None or request.response_status_code is None:
        return None
    raw = encryption.decrypt(request.response_body)
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return {"status_code": request.response_status_code, "body": body}


def request_object(request: Request) -> dict:
    """Serialise a request; expects `project` selected and `attempts` prefetched."""
    return {
        "id": request.public_id,
        "object": "request",
        "status": request.status,
        "project": request.project.public_id,
        "endpoint": request.endpoint,
        "model": request.model,
        "stream": request.stream,
        "idempotency_key": request.idempotency_key,
        "created_at": _timestamp(request.created_at),
        "started_at": _timestamp(request.started_at),
        "finished_at": _timestamp(request.finished_at),
        "partial": request.partial,
        "attempts": [attempt_object(attempt) for attempt in request.attempts.all()],
        "usage": request.usage,
        "response": response_object(request),
        "error": request.error,
    }
