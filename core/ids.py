"""Public ids: a type prefix and a time-ordered random part, never a sequential integer.

The first 12 hex digits are the creation time in milliseconds, so ids sort by creation
and can serve as pagination cursors; the last 16 are random (64 bits).
"""

import re
import secrets
import time

# Ours (`req_01a2…`) and Paddle's (`txn_01h…`): a lowercase prefix, "_", lowercase letters and
# digits. Nothing else can name an object, and a NUL could not even be compared in PostgreSQL.
PUBLIC_ID = "[a-z]+_[0-9a-z]+"
_PUBLIC_ID = re.compile(PUBLIC_ID)


def new_public_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def is_public_id(value: str) -> bool:
    return _PUBLIC_ID.fullmatch(value) is not None


def is_id_of(prefix: str, value: str) -> bool:
    """Whether `value` has the shape of an id new_public_id(prefix) makes (`req_` and 28 hex
    digits): a cursor that is not one is refused, rather than compared as if it were."""
    return re.fullmatch(f"{prefix}_[0-9a-f]{{28}}", value) is not None


class PublicIdConverter:
    """`<pid:name>` in a URL: matches only a public id's shape, so any other value is a 404
    before a query runs."""

    regex = PUBLIC_ID

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value
