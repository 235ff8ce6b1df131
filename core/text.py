"""Text from outside made storable. JSON can escape a NUL or a lone surrogate into a
string, and PostgreSQL's text and jsonb hold neither."""

import re

_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with each character PostgreSQL cannot store replaced by U+FFFD."""
    return _NOT_STORABLE.sub("\ufffd", text)
