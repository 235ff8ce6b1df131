"""OpenAI-shaped response bodies and SSE event streams served by the fake upstream."""

from __future__ import annotations

import json
import math
import re
import struct
import time
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REPLY_PIECES = ("Hello", " from", " fake", " upstream")
REPLY = "".join(REPLY_PIECES)
MODEL_IDS = (
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "gpt-image-1",
    "omni-moderation-latest",
)
MODELS_PATH = re.compile(r"/v1/models(/[^/]+)?")
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
ODD_TEXT = "odd\x00\ud800"  # JSON escapes both; PostgreSQL text holds neither
DEEP = "<5,000 nested arrays>"  # stands for them in a payload until it is encoded
_DEEP_JSON = b"[" * 5000 + b"]" * 5000
JUNK = b"<html>\x00\xff\xfe not an event stream }{\r\n\x07\x1b[0m</html>\n"

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", None),
    408: ("timeout", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(
    status: int, message: str, *, kind: str | None = None, code: str | None = None
) -> dict:
    """The OpenAI error envelope, with a type/code typical for ``status`` unless given."""
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None)
    default_kind, default_code = _ERROR_KINDS.get(status, fallback)
    error = {
        "message": message,
        "type": kind or default_kind,
        "param": None,
        "code": code or default_code,
    }
    return {"error": error}


@dataclass
class Call:
    """One successful API call being answered."""

    rid: int
    body: dict[str, Any]
    prompt_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))
    oddity: str = ""  # the `200odd` / `200deep` steps: token counts a broken upstream sends

    @property
    def model(self) -> str:
        return str(self.body.get("model", "gpt-4o-mini"))

    def usage(self) -> dict[str, int | str] | str:
        if self.oddity == "odd":
            return {"prompt_tokens": ODD_TEXT, "completion_tokens": math.nan, "total_tokens": -1.5}
        if self.oddity == "deep":
            return DEEP
        output = len(REPLY_PIECES)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": output,
            "total_tokens": self.prompt_tokens + output,
        }

    def inputs(self) -> int:
        value = self.body.get("input")
        many = isinstance(value, list) and value and not isinstance(value[0], int)
        return len(value) if many else 1

    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


def encoded(data: Any, separators: tuple[str, str] | None = None) -> bytes:
    """JSON, with `DEEP` written out as the nesting it stands for."""
    text = json.dumps(data, separators=separators).encode()
    return text.replace(b'"%s"' % DEEP.encode(), _DEEP_JSON)


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data.encode() if isinstance(data, str) else encoded(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + b"data: " + payload + b"\n\n"


def _chat(call: Call) -> dict:
    message = {"role": "assistant", "content": REPLY, "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": f"chatcmpl-fake{call.rid}",
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "system_fingerprint": "fp_fake",
        "choices": [choice],
        "usage": call.usage(),
    }


def _chat_stream(call: Call) -> list[bytes]:
    base = {
        "id": f"chatcmpl-fake{call.rid}",
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": call.model,
        "system_fingerprint": "fp_fake",
    }

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": REPLY_PIECES[0]})]
    events += [chunk({"content": piece}) for piece in REPLY_PIECES[1:]]
    events.append(chunk({}, "stop"))
    if call.include_usage():
        events.append(_sse({**base, "choices": [], "usage": call.usage()}))
    return [*events, _sse("[DONE]")]


def _completion(call: Call) -> dict:
    choice = {"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": f"cmpl-fake{call.rid}",
        "object": "text_completion",
        "created": call.created,
        "model": call.model,
        "choices": [choice],
        "usage": call.usage(),
    }


def _completion_stream(call: Call) -> list[bytes]:
    base = {
        "id": f"cmpl-fake{call.rid}",
        "object": "text_completion",
        "created": call.created,
        "model": call.model,
    }
    pieces = [(piece, None) for piece in REPLY_PIECES] + [("", "stop")]
    events = [
        _sse(
            {
                **base,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }
        )
        for text, finish in pieces
    ]
    if call.include_usage():
        events.append(_sse({**base, "choices": [], "usage": call.usage()}))
    return [*events, _sse("[DONE]")]


def _message_item(call: Call) -> dict:
    content = [{"type": "output_text", "text": REPLY, "annotations": []}]
    return {
        "type": "message",
        "id": f"msg_fake{call.rid}",
        "status": "completed",
        "role": "assistant",
        "content": content,
    }


def _response(call: Call, status: str = "completed") -> dict:
    done = status == "completed"
    usage = call.usage()
    return {
        "id": f"resp_fake{call.rid}",
        "object": "response",
        "created_at": call.created,
        "status": status,
        "model": call.model,
        "output": [_message_item(call)] if done else [],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        }
        if done
        else None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
    }


def _response_stream(call: Call) -> list[bytes]:
    where = {"item_id": f"msg_fake{call.rid}", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    item = {**_message_item(call), "status": "in_progress", "content": []}
    events: list[tuple[str, dict]] = [
        ("response.created", {"response": _response(call, "in_progress")}),
        ("response.in_progress", {"response": _response(call, "in_progress")}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {**where, "part": part}),
        *[("response.output_text.delta", {**where, "delta": piece}) for piece in REPLY_PIECES],
        ("response.output_text.done", {**where, "text": REPLY}),
        ("response.content_part.done", {**where, "part": {**part, "text": REPLY}}),
        ("response.output_item.done", {"output_index": 0, "item": _message_item(call)}),
        ("response.completed", {"response": _response(call)}),
    ]
    return [
        _sse({"type": kind, "sequence_number": number, **data}, event=kind)
        for number, (kind, data) in enumerate(events)
    ]


def _embeddings(call: Call) -> dict:
    dims = int(call.body.get("dimensions") or 8)
    data = []
    for index in range(call.inputs()):
        vector = [((index * 37 + k) % 100) / 100 for k in range(dims)]
        encoded: Any = vector
        if call.body.get("encoding_format") == "base64":
            encoded = b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
    return {"object": "list", "data": data, "model": call.model, "usage": usage}


def _images(call: Call) -> dict:
    if call.body.get("response_format") == "url":
        image = {"url": "https://images.fake-upstream.invalid/1.png"}
    else:
        image = {"b64_json": TINY_PNG_B64}
    return {"created": call.created, "data": [image] * int(call.body.get("n") or 1)}


def _moderations(call: Call) -> dict:
    categories = ("harassment", "hate", "self-harm", "sexual", "violence")
    result = {
        "flagged": False,
        "categories": dict.fromkeys(categories, False),
        "category_scores": dict.fromkeys(categories, 0.0001),
    }
    model = str(call.body.get("model", "omni-moderation-latest"))
    return {"id": f"modr-fake{call.rid}", "model": model, "results": [result] * call.inputs()}


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"}


def models_response(path: str) -> tuple[int, dict]:
    """Status and body for GET /v1/models or /v1/models/{id}."""
    if path == "/v1/models":
        return 200, {"object": "list", "data": [_model(model_id) for model_id in MODEL_IDS]}
    model_id = path.removeprefix("/v1/models/")
    if model_id == "invalid-status":
        return 600, error_body(600, "A status no HTTP client should accept.")
    if model_id == "missing-model":
        message = f"The model '{model_id}' does not exist"
        return 404, error_body(404, message, code="model_not_found")
    return 200, _model(model_id)


JSON_ROUTES: dict[str, Callable[[Call], dict]] = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completion,
    "/v1/responses": _response,
    "/v1/embeddings": _embeddings,
    "/v1/images/generations": _images,
    "/v1/moderations": _moderations,
}
STREAM_ROUTES: dict[str, Callable[[Call], list[bytes]]] = {
    "/v1/chat/completions": _chat_stream,
    "/v1/completions": _completion_stream,
    "/v1/responses": _response_stream,
}
