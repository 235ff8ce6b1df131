"""OpenAI-compatible fake upstream LLM API with scriptable faults (stdlib only).

A minimal HTTP/1.1 server on asyncio streams (keep-alive; Content-Length or chunked
request bodies; JSON or SSE responses) serving, under ``/v1``: POST chat/completions,
completions, responses, embeddings, images/generations, moderations; GET models[/{id}].
Requests need ``Authorization: Bearer <key>`` (``sk-bad`` is rejected).
``GET /_fake/counts`` (no auth) reports request counts per path and per model.

Scripting faults
----------------
Each POST follows one *step*, chosen by the first rule that applies:

1. ``FakeUpstream.script(key, steps[, headers])``: requests whose ``X-Fake-Script-Key``
   header, or else whose ``model``, equals ``key`` (their answers carry ``headers`` too);
2. ``"model": "script:<step>,<step>,..."``: a sequence consumed per script key, i.e. the
   ``X-Fake-Script-Key`` header if sent, else the model plus a hash of the body (a retry
   of one body walks the sequence; other bodies get their own);
3. ``"model": "sleep-<MS>"``: always wait MS ms, then succeed;
4. any other model: immediate success (or the server's ``default_step``).

The last step of a sequence repeats once it is exhausted. Steps:

    200              success
    NNN              status NNN (200-999: past 599, as a broken upstream might send) with an
                     OpenAI error envelope
    429q             429 insufficient_quota
    NNNodd           a broken upstream's values: status NNN whose error code holds a NUL
                     and a lone surrogate; for 200, success whose token counts are such
                     strings and NaN
    NNNdeep          status NNN whose error (for 200: usage) nests 5,000 arrays deep,
                     deeper than Python's JSON parser goes
    NNNra<S>         status NNN with ``Retry-After: S``; NNNram<MS> with ``retry-after-ms: MS``
                     (S and MS may be negative, as a broken upstream might send)
    sleep<MS>        wait MS ms, then succeed
    drop             read the request, then close the socket without a response
    hang             never answer; hold the connection until the client leaves (10 min cap)
    cut<N>           stream N SSE events, then close mid-body (non-stream: half the body)
    stall<N>         stream N SSE events, then hang (non-stream: headers only, then hang)
    slowchunks<MS>   MS ms between SSE events (non-stream: between 16-byte pieces of the JSON)
    garbage          200 with junk bytes instead of SSE (non-stream: instead of JSON)

In tests: ``with FakeUpstream() as server: OpenAI(base_url=server.base_url, ...)``.
Standalone: ``python -m tests.fake_upstream --port 9999 [--host 127.0.0.1] [--delay-ms 0]
[--default-step 503]``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from tests.fake_upstream.payloads import (
    DEEP,
    JSON_ROUTES,
    JUNK,
    MODELS_PATH,
    ODD_TEXT,
    STREAM_ROUTES,
    Call,
    encoded,
    error_body,
    models_response,
)

__all__ = ["FakeUpstream", "RecordedRequest", "Step", "parse_step"]

MAX_HOLD_SECONDS = 600.0
# Among `answer_raw`'s pieces: send the rest only when the client writes to this connection
# again (the next request it sends on it), or close if it closes the connection first.
WHEN_ASKED_AGAIN = b"<when asked again>"
_STEP_RE = re.compile(
    r"(?P<status>[2-9]\d\d)(?:(?P<quota>q)|(?P<oddity>odd|deep)|ra(?P<ms>m?)(?P<after>-?\d+))?"
    r"|(?P<action>sleep|cut|stall|slowchunks)(?P<n>\d+)|(?P<bare>drop|hang|garbage)"
)
_SLEEP_MODEL_RE = re.compile(r"sleep-(\d+)")


@dataclass(frozen=True)
class Step:
    text: str
    action: str = "respond"  # respond|sleep|drop|hang|cut|stall|slowchunks|garbage
    status: int = 200
    n: int = 0
    quota: bool = False
    oddity: str = ""  # "odd" | "deep"
    headers: tuple[tuple[str, str], ...] = ()


def parse_step(text: str) -> Step:
    match = _STEP_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"unknown fake upstream step {text!r}")
    if match["status"]:
        header = "retry-after-ms" if match["ms"] else "retry-after"
        headers = ((header, match["after"]),) if match["after"] else ()
        status, quota, oddity = int(match["status"]), bool(match["quota"]), match["oddity"] or ""
        return Step(text, status=status, quota=quota, oddity=oddity, headers=headers)
    if match["action"]:
        return Step(text, action=match["action"], n=int(match["n"]))
    return Step(text, action=match["bare"])


@functools.lru_cache(maxsize=1024)
def _parse_script(model: str) -> tuple[Step, ...]:
    return tuple(parse_step(text) for text in model.removeprefix("script:").split(","))


def _step_error(step: Step) -> dict:
    if step.quota:
        message = "You exceeded your current quota, please check your plan and billing details."
        return error_body(429, message, kind="insufficient_quota", code="insufficient_quota")
    code = ODD_TEXT if step.oddity == "odd" else None
    error = error_body(step.status, f"Scripted fake upstream failure ({step.text}).", code=code)
    if step.oddity == "deep":
        error["error"]["param"] = DEEP
    return error


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lowercased names
    body: dict[str, Any] | None  # parsed JSON
    received_at: float  # time.time()
    step: str | None  # None for GETs and requests rejected before scripting (auth, 404, JSON)


@dataclass(frozen=True)
class _HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


async def _read_request(reader: asyncio.StreamReader) -> _HttpRequest | None:
    """The next request on the connection, or None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    request_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
    method, target, version = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        body = b"".join(parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length") or 0))
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return _HttpRequest(method, target.split("?", 1)[0], headers, body, keep_alive)


def _head(
    status: int,
    rid: int,
    content_type: str,
    length: int | None,
    keep_alive: bool,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Status line and headers; ``length=None`` means a chunked body. An ``extra`` header
    named like a default one (``x-request-id``...) replaces it."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    extra = list(extra)
    replaced = {name for name, _ in extra}
    defaults = (
        ("x-request-id", f"req_fake_{rid}"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
    )
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"content-type: {content_type}",
        "transfer-encoding: chunked" if length is None else f"content-length: {length}",
        *(f"{name}: {value}" for name, value in defaults if name not in replaced),
    ]
    if not keep_alive:
        lines.append("connection: close")
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _hold(reader: asyncio.StreamReader) -> None:
    """Wait until the client closes the connection (at most MAX_HOLD_SECONDS)."""
    try:
        await asyncio.wait_for(reader.read(), MAX_HOLD_SECONDS)
    except TimeoutError:
        pass


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class FakeUpstream:
    """The fake API: ``start()`` serves it from a daemon thread, ``serve()`` in a running loop."""

    def __init__(
        self,
        delay_ms: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        default_step: str = "200",
    ) -> None:
        self.delay_ms = delay_ms  # added before answering every POST
        self.default_step = parse_step(default_step)  # for models nothing else scripts
        self.host = host
        self.port = port
        self.record = record  # keep RecordedRequests (off for long standalone runs)
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []
        self._path_counts: Counter[str] = Counter()
        self._model_counts: Counter[str] = Counter()
        self._scripts: dict[str, tuple[Step, ...]] = {}
        self._raw: dict[str, tuple[bytes, ...]] = {}
        self._cursors: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._connections: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---------------------------------------------------------- test-facing API (thread-safe)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._records)

    def count(
        self, path: str | None = None, predicate: Callable[[RecordedRequest], bool] | None = None
    ) -> int:
        """Recorded requests to ``path`` ("/v1/x" or "/x") that match ``predicate``."""
        wanted = path if path is None or path.startswith("/v1") else "/v1" + path
        return sum(
            1
            for request in self.requests
            if (wanted is None or request.path == wanted)
            and (predicate is None or predicate(request))
        )

    def reset(self) -> None:
        """Forget recorded requests, counts, scripts and script positions."""
        with self._lock:
            self._records.clear()
            self._path_counts.clear()
            self._model_counts.clear()
            self._scripts.clear()
            self._raw.clear()
            self._cursors.clear()

    def script(
        self, key: str, steps: str | Iterable[str], headers: Mapping[str, str] | None = None
    ) -> None:
        """Requests with ``X-Fake-Script-Key: key`` (or else model ``key``) walk ``steps``;
        every answer of theirs, plain or streamed, carries ``headers`` (lowercase names)."""
        texts = steps.split(",") if isinstance(steps, str) else list(steps)
        if not texts:
            raise ValueError("a script needs at least one step")
        extra = tuple((headers or {}).items())
        parsed = tuple(
            replace(step, headers=step.headers + extra) for step in map(parse_step, texts)
        )
        with self._lock:
            self._scripts[key] = parsed
            self._cursors.pop("script:" + key, None)

    def answer_raw(self, key: str, *pieces: bytes) -> None:
        """POSTs for model ``key`` (GETs of path ``key``: "/v1/models") get exactly
        ``pieces`` (status line, headers and body, each piece flushed 50 ms after the last;
        after ``WHEN_ASKED_AGAIN``, once the client sends on the connection again), then the
        connection closes: for answers no step describes, down to where the TCP pieces
        split."""
        with self._lock:
            self._raw[key] = pieces

    # ---------------------------------------------------------- lifecycle

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("fake upstream already started")
        ready = threading.Event()
        failures: list[Exception] = []

        def run() -> None:
            try:
                asyncio.run(self.serve(on_ready=ready.set))
            except Exception as exc:
                failures.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failures:
            cause = failures[0] if failures else None
            raise RuntimeError("fake upstream failed to start") from cause
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def serve(
        self, on_ready: Callable[[], None] = lambda: None, stop_on_signals: bool = False
    ) -> None:
        """Serve until ``stop()`` (or SIGINT/SIGTERM when ``stop_on_signals``)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if stop_on_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(signum, self._stopping.set)
        server = await asyncio.start_server(
            self._handle_connection, self.host, self.port, backlog=4096, reuse_address=True
        )
        self.port = server.sockets[0].getsockname()[1]
        on_ready()
        await self._stopping.wait()
        server.close()
        for writer in list(self._connections):
            writer.close()
        await server.wait_closed()

    # ---------------------------------------------------------- request handling

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._connections.add(writer)
        try:
            while (request := await _read_request(reader)) is not None:
                if not await self._respond(request, reader, writer):
                    break
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # the client went away or sent malformed HTTP: just close
        except asyncio.CancelledError:
            pass  # shutdown; re-raising makes Python 3.11's stream callback log a traceback
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _respond(
        self, request: _HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; returns whether the connection may be kept open."""
        rid = next(self._ids)
        keep_alive = request.keep_alive
        if request.method == "GET" and request.path == "/_fake/counts":
            with self._lock:
                counts = {"paths": dict(self._path_counts), "models": dict(self._model_counts)}
            return await self._send_json(writer, rid, 200, counts, keep_alive)
        body = _json_object(request.body) if request.method == "POST" else None
        rejection = self._rejection(request, body)
        key = request.path if request.method == "GET" else (body or {}).get("model")
        with self._lock:
            raw = self._raw.get(key) if rejection is None and isinstance(key, str) else None
        if raw is None and (rejection is not None or body is None):  # or GET /v1/models
            self._record(request, body, None)
            status, payload = rejection or models_response(request.path)
            return await self._send_json(writer, rid, status, payload, keep_alive)
        if raw is not None:
            self._record(request, body, "raw")
            for index, piece in enumerate(raw):
                if piece is WHEN_ASKED_AGAIN:
                    if not await reader.read(1):  # closed: the client wants nothing more
                        return False
                    continue
                if index:
                    await asyncio.sleep(0.05)
                writer.write(piece)
                await writer.drain()
            return False
        try:
            step = self._choose_step(request, body)
        except ValueError as exc:
            self._record(request, body, None)
            return await self._send_json(writer, rid, 400, error_body(400, str(exc)), keep_alive)
        self._record(request, body, step.text)
        delay_ms = self.delay_ms + (step.n if step.action == "sleep" else 0)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if step.action == "drop":
            return False
        if step.action == "hang":
            await _hold(reader)
            return False
        if step.status != 200:
            return await self._send_json(
                writer, rid, step.status, _step_error(step), keep_alive, step.headers
            )
        call = Call(rid, body, prompt_tokens=max(1, len(request.body) // 4), oddity=step.oddity)
        if body.get("stream") is True and request.path in STREAM_ROUTES:
            events = STREAM_ROUTES[request.path](call)
            return await self._send_stream(step, events, rid, keep_alive, reader, writer)
        if step.action == "garbage":
            data = JUNK
        else:
            data = encoded(JSON_ROUTES[request.path](call))
        head = _head(200, rid, "application/json", len(data), keep_alive, step.headers)
        if step.action == "cut":
            writer.write(head + data[: len(data) // 2])
            await writer.drain()
            return False
        if step.action == "stall":
            writer.write(head)
            await writer.drain()
            await _hold(reader)
            return False
        if step.action == "slowchunks":
            writer.write(head)
            for start in range(0, len(data), 16):
                await asyncio.sleep(step.n / 1000)
                writer.write(data[start : start + 16])
                await writer.drain()
            return keep_alive
        writer.write(head + data)
        await writer.drain()
        return keep_alive

    def _rejection(self, request: _HttpRequest, body: dict | None) -> tuple[int, dict] | None:
        """The error answer due before any scripting: auth, unknown URL, unparsable JSON."""
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ").strip()
        if not authorization.startswith("Bearer ") or not token:
            message = "You didn't provide an API key. Use 'Authorization: Bearer YOUR_KEY'."
            return 401, error_body(401, message)
        if token == "sk-bad":
            return 401, error_body(401, "Incorrect API key provided: sk-bad.")
        known = (request.method == "POST" and request.path in JSON_ROUTES) or (
            request.method == "GET" and MODELS_PATH.fullmatch(request.path)
        )
        if not known:
            return 404, error_body(404, f"Invalid URL ({request.method} {request.path})")
        if request.method == "POST" and body is None:
            return 400, error_body(400, "We could not parse the JSON body of your request.")
        return None

    def _choose_step(self, request: _HttpRequest, body: dict[str, Any]) -> Step:
        header_key = request.headers.get("x-fake-script-key")
        model = body.get("model") if isinstance(body.get("model"), str) else ""
        with self._lock:
            for key in (header_key, model):
                if key and key in self._scripts:
                    return self._advance("script:" + key, self._scripts[key])
        if model.startswith("script:"):
            steps = _parse_script(model)
            key = header_key or f"{model}#{hashlib.sha256(request.body).hexdigest()[:16]}"
            with self._lock:
                return self._advance("model:" + key, steps)
        if sleep := _SLEEP_MODEL_RE.fullmatch(model):
            return Step(model, action="sleep", n=int(sleep[1]))
        return self.default_step

    def _advance(self, cursor: str, steps: tuple[Step, ...]) -> Step:
        """The next step of ``steps`` at ``cursor``; the caller holds the lock."""
        index = self._cursors.get(cursor, 0)
        self._cursors[cursor] = index + 1
        return steps[min(index, len(steps) - 1)]

    def _record(self, request: _HttpRequest, body: dict | None, step: str | None) -> None:
        model = body.get("model") if body else None
        with self._lock:
            self._path_counts[request.path] += 1
            if isinstance(model, str):
                self._model_counts[model] += 1
            if self.record:
                self._records.append(
                    RecordedRequest(
                        request.method, request.path, request.headers, body, time.time(), step
                    )
                )

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        rid: int,
        status: int,
        payload: dict,
        keep_alive: bool,
        extra: Iterable[tuple[str, str]] = (),
    ) -> bool:
        data = encoded(payload)
        writer.write(_head(status, rid, "application/json", len(data), keep_alive, extra) + data)
        await writer.drain()
        return keep_alive

    async def _send_stream(
        self,
        step: Step,
        events: list[bytes],
        rid: int,
        keep_alive: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        extra = [("cache-control", "no-cache"), *step.headers]
        writer.write(_head(200, rid, "text/event-stream; charset=utf-8", None, keep_alive, extra))
        if step.action == "garbage":
            events = [JUNK]
        limit = step.n if step.action in ("cut", "stall") else len(events)
        for index, event in enumerate(events[:limit]):
            if index and step.action == "slowchunks":
                await asyncio.sleep(step.n / 1000)
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        if step.action == "cut":
            return False
        if step.action == "stall":
            await _hold(reader)
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive
