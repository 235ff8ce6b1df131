"""Text and JSON from outside (a caller's body, an upstream's answer, a stored copy of
either), made safe to parse and to store."""

import json
import re

_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with each character PostgreSQL cannot store replaced by U+FFFD: JSON can
    escape a NUL or a lone surrogate into a string, and text and jsonb hold neither."""
    return _NOT_STORABLE.sub("\ufffd", text)


def parse_json(raw: bytes | str):
    """`json.loads`, except that JSON nested deeper than the parser goes raises ValueError
    like any other invalid JSON, not RecursionError."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


def parse_json_to_show(raw: bytes | str):
    """`parse_json` for a stored body shown again: what parses but cannot be written out
    as UTF-8 JSON (NaN, Infinity, a lone surrogate: Python's parser takes all three) raises
    ValueError, so it is shown as its text instead."""
    value = parse_json(raw)
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except RecursionError:
        raise ValueError("JSON nested too deeply to write out") from None
    return value  # (a UnicodeEncodeError is a ValueError too)
