"""Public ids: a type prefix and a time-ordered random part, never a sequential integer.

The first 12 hex digits are the creation time in milliseconds, so ids sort by creation
and can serve as pagination cursors; the last 16 are random (64 bits).
"""

import secrets
import time


def new_public_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"
