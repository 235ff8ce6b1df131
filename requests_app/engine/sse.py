"""Server-sent events as the engine reads them: whether an answer is an event stream, its
events' data (where the usage is), and whether it ended as its endpoint's streams end."""

import re

from core.untrusted import parse_json

BOM = b"\xef\xbb\xbf"
FIELD_PREFIXES = (b"data:", b"event:", b"id:", b"retry:", b":")
# A Responses stream ends with one of these events; the other endpoints' with [DONE].
RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events by which a Responses stream says the answer failed.
RESPONSE_ERRORS = frozenset({"error", "response.failed"})
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # SSE allows all three
# A blank line, which ends an event: two line breaks in a row (CR LF being one).
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n){2}")


def has_first_line(received: bytes) -> bool:
    return _LINE_BREAK.search(received) is not None


def starts_as_event_stream(received: bytes) -> bool:
    """Does the first line (all of `received` if no line break yet), after a byte order
    mark, read as SSE: blank, a field or a comment?"""
    line = _LINE_BREAK.split(received.removeprefix(BOM), maxsplit=1)[0]
    return line.strip() == b"" or line.lstrip().startswith(FIELD_PREFIXES)


def whole_events_end(received: bytes, *, looked: int = 0) -> int:
    """Where the last whole event in `received` ends (after its blank line), searching past
    `looked` (less the three bytes a blank line split across pieces may start with); 0 when
    no event ends there."""
    end = 0
    for match in _EVENT_END.finditer(received, max(0, looked - 3)):
        end = match.end()
    return end


def data_values(body: bytes) -> list[bytes]:
    """Each event's data in order, as an SSE client reads it: the values of the event's
    `data:` lines (the one space SSE allows after the colon dropped) joined by line breaks.
    An event the stream ends inside, before its blank line, counts too."""
    values, lines = [], []
    for line in _LINE_BREAK.split(body.removeprefix(BOM)):
        if not line and lines:  # a blank line ends the event
            values.append(b"\n".join(lines))
            lines = []
        elif line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    if lines:
        values.append(b"\n".join(lines))
    return values


def event_objects(body: bytes) -> list[dict]:
    """The JSON objects among the stream's data values; anything else is skipped."""
    events = []
    for value in data_values(body):
        try:
            event = parse_json(value)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def completed(endpoint: str, body: bytes) -> bool:
    """Did the upstream end its stream as its endpoint's streams end, rather than just close
    the connection? Only the last data value counts: an earlier event whose text mentions
    an end marker ends nothing."""
    values = [value for value in data_values(body) if value.strip()]
    if endpoint == "/v1/responses":
        if values and values[-1].strip() == b"[DONE]":  # some compatible servers add one
            values.pop()
        try:
            last = parse_json(values[-1]) if values else None
        except ValueError:
            return False
        return isinstance(last, dict) and last.get("type") in RESPONSE_ENDS
    return bool(values) and values[-1].strip() == b"[DONE]"


def before_end(endpoint: str, body: bytes) -> bytes:
    """`body` (whole events) without the events that end it as its endpoint's streams end
    ([DONE], a Responses stream's last event), so that an error event may follow: an SSE
    client stops reading at the end, and would never see it."""
    while completed(endpoint, body):
        body = body[: whole_events_end(body.rstrip(b"\r\n"))]
    return body


def reports_error(body: bytes) -> bool:
    """Did the upstream say inside its stream that the answer failed? A chat or completions
    stream sends an object with an `error`, a Responses stream an `error` event or ends
    with `response.failed`; either may still end with a clean [DONE]."""
    if b'"error"' not in body:  # most streams: no event to parse
        return False
    return any(
        event.get("error") or event.get("type") in RESPONSE_ERRORS for event in event_objects(body)
    )
