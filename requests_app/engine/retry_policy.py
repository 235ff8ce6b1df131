"""Which upstream answers are worth retrying, and how long to wait before the next try."""

import math
import random
from email.utils import parsedate_to_datetime

from django.utils import timezone

from core.untrusted import parse_json, storable

RETRYABLE_STATUS_CODES = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 120.0


def is_insufficient_quota(body: bytes) -> bool:
    """OpenAI's 429 for an exhausted balance: retrying cannot help."""
    try:
        error = parse_json(body).get("error") or {}
    except (ValueError, AttributeError):
        return False
    if not isinstance(error, dict):
        return False
    return "insufficient_quota" in (error.get("code"), error.get("type"))


def is_retryable_status(status_code: int, body: bytes) -> bool:
    if status_code == 429 and is_insufficient_quota(body):
        return False
    return status_code in RETRYABLE_STATUS_CODES


def error_code_of(body: bytes) -> str | None:
    try:
        error = parse_json(body).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return storable(str(code))[:64] if code else None
    return None


def _clamped_ms(seconds: float) -> int | None:
    """A hint as whole milliseconds within [0, cap]; None for NaN. Upstreams send odd values
    (negative, huge, fractional) and none of them may reach the database unchecked."""
    if math.isnan(seconds):
        return None
    return int(max(0.0, min(seconds, RETRY_AFTER_CAP_SECONDS)) * 1000)


def retry_after_ms(headers) -> int | None:
    """`retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date), within [0, cap]."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return _clamped_ms(float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - timezone.now()).total_seconds()
        except (TypeError, ValueError):
            return None
    return _clamped_ms(seconds)


def backoff_seconds(attempt_number: int, retry_after: int | None) -> float:
    """Exponential backoff with full jitter; the upstream's Retry-After wins when it is given."""
    if retry_after is not None:
        return retry_after / 1000
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt_number - 1))
    return random.uniform(0, ceiling)
