"""Text, numbers and JSON from outside (a caller's body, headers and query, an upstream's
answer, a stored copy of either), made safe to parse and to store."""

import json
import re
from datetime import UTC, datetime

from django.utils.dateparse import parse_datetime

_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 whose backslash is not escaped


def storable(text: str) -> str:
    """`text` with each character PostgreSQL cannot store replaced by U+FFFD: JSON can
    escape a NUL or a lone surrogate into a string, and text and jsonb hold neither."""
    return _NOT_STORABLE.sub("\ufffd", text)


def whole_number(raw: str, *, minimum: int, maximum: int) -> int | None:
    """`raw` as a whole number from `minimum` to `maximum`, or None. ASCII digits only:
    `int()` also takes spaces, underscores and other scripts' digits, and a 5,000-digit
    value is past its limit."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(maximum)):
        return None
    number = int(raw)
    return number if minimum <= number <= maximum else None


def aware_time(raw: object) -> datetime | None:
    """`raw`, an ISO 8601 time with its UTC offset, as a time in UTC (`in_utc`); None when
    it is not a string or not a valid time."""
    try:
        moment = parse_datetime(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return in_utc(moment) if moment else None


def in_utc(moment: datetime) -> datetime | None:
    """`moment` in UTC; None when it has no offset or falls before year 1 or after 9999 once
    in UTC (PostgreSQL would store that, but loading the row back would fail on every read)."""
    try:
        return moment.astimezone(UTC) if moment.tzinfo else None
    except OverflowError:
        return None


def _not_a_json_number(name: str):
    raise ValueError(f"{name} is not a JSON number")


class NestedTooDeeply(ValueError):
    """JSON nested deeper than the parser goes: not read, which says nothing of whether it
    is valid."""


def parse_json(raw: bytes | str, *, allow_nan: bool = True):
    """`json.loads`, except that JSON nested deeper than the parser goes raises ValueError
    (`NestedTooDeeply`) like any other invalid JSON, not RecursionError. With
    `allow_nan=False`, NaN, Infinity and -Infinity, which Python's parser takes but JSON does
    not have, raise ValueError too."""
    try:
        return json.loads(raw, parse_constant=None if allow_nan else _not_a_json_number)
    except RecursionError:
        raise NestedTooDeeply("JSON nested too deeply to parse") from None


def parse_json_to_keep(raw: bytes | str):
    """`parse_json`, refusing what parses but cannot be written out again as UTF-8 JSON
    or kept in jsonb: NaN or Infinity, a lone surrogate (Python's parser takes all three),
    a NUL. A stored body is then shown as its text; an event is refused."""
    value = parse_json(raw)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode()  # a UnicodeEncodeError is a ValueError too
    except RecursionError:
        raise ValueError("JSON nested too deeply to write out") from None
    if _ESCAPED_NUL.search(text):
        raise ValueError("JSON holds a NUL")
    return value
