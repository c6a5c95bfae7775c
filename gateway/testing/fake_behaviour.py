"""What every fake provider route shares: the state (scripted behaviours, request log), the
opening of a turn (log it, pop its behaviour, inject delay/hang/drop/error status) and the
fault-injecting writers for JSON bodies and event streams.

A provider module only builds its own wire format; each passes an ``ErrorResponder`` that
turns (status, message) into that provider's error body.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

LOG_SIZE = 200
HANG_SECONDS = 300.0
JSON_TYPE = "application/json"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
BODY_MODES = ("garbage", "truncated", "empty")
# Allowed JSON types per behaviour field; unknown fields are rejected so typos fail loudly.
BEHAVIOUR_FIELDS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("status", "stream_cut_after", "reply_tokens", "cached_tokens",
                      "cache_write_tokens"), (int,)),
    **dict.fromkeys(("retry_after", "delay_ms", "chunk_delay_ms"), (int, float)),
    **dict.fromkeys(("hang", "drop", "stream_garbage", "no_usage"), (bool,)),
    **dict.fromkeys(("body", "reply"), (str,)),
}

ErrorResponder = Callable[[int, str], web.Response]
"""Builds one provider's error response from an HTTP status and a message."""


class FakeUpstreamState:
    """Defaults, the scripted behaviour queue and the request log of one fake upstream."""

    def __init__(self, *, delay_ms: float, chunk_delay_ms: float, reply_tokens: int) -> None:
        self.delay_ms = delay_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.reply_tokens = reply_tokens
        self.script: deque[dict[str, Any]] = deque()
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self.received = 0
        self._last_id = 0

    def next_number(self) -> int:
        """A fresh number for response ids, shared by every provider route."""
        self._last_id += 1
        return self._last_id

    def next_id(self, prefix: str = "chatcmpl-fake-") -> str:
        return f"{prefix}{self.next_number()}"


STATE = web.AppKey("fake_upstream_state", FakeUpstreamState)


@dataclass(slots=True)
class Turn:
    """One provider call that got past the scripted faults: its parsed body (None when it
    was not JSON) and its behaviour (empty when the script was)."""

    body: Any
    behaviour: dict[str, Any]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type=JSON_TYPE, headers=headers
    )


def default_message(status: int) -> str:
    """The message of a scripted error status."""
    if status == 429:
        return "Rate limit reached (fake)."
    if status >= 500:
        return "The server had an error (fake)."
    return f"Scripted error {status} (fake)."


def behaviour_problem(item: Any) -> str | None:
    """Why a scripted behaviour object is invalid, or None."""
    if not isinstance(item, dict):
        return "each behaviour must be an object"
    for key, value in item.items():
        types = BEHAVIOUR_FIELDS.get(key)
        if types is None:
            return f"unknown behaviour field {key!r}"
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"behaviour field {key!r} has the wrong type"
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            return f"behaviour field {key!r} must not be negative"
    if "status" in item and not 400 <= item["status"] <= 599:
        return "status must be within 400..599"
    if "body" in item and item["body"] not in BODY_MODES:
        return f"body must be one of {', '.join(BODY_MODES)}"
    return None


async def _hang(request: web.Request) -> None:
    # Poll instead of relying on handler cancellation, which aiohttp runners disable by
    # default: once the client goes away aiohttp drops the request's transport.
    deadline = time.monotonic() + HANG_SECONDS
    while request.transport is not None and not request.transport.is_closing():
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.05)


def close_connection(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Close the client connection; returns ``resp`` for the handler to return."""
    # close() (not abort()) so already written stream events reach the client first. The
    # returned response can then not be finished; aiohttp treats that as a quiet disconnect.
    if request.transport is not None:
        request.transport.close()
    return resp


def record_request(request: web.Request, raw: bytes) -> Any:
    """Count and log a request whose body is ``raw``; returns the parsed JSON body (None when
    it is not JSON)."""
    state = request.app[STATE]
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    state.received += 1
    # Headers are kept as aiohttp's read-only proxy (case-insensitive lookups); turning them
    # into a plain dict waits until someone reads the log, off the hot path.
    state.log.append(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": request.headers,
            "body": body,
        }
    )
    return body


async def open_turn(request: web.Request, error: ErrorResponder) -> Turn | web.StreamResponse:
    """Log the request and apply its scripted faults; a response means the turn ends here."""
    state = request.app[STATE]
    body = record_request(request, await request.read())
    behaviour = state.script.popleft() if state.script else {}

    delay_ms = behaviour.get("delay_ms", state.delay_ms)
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    if behaviour.get("hang"):
        await _hang(request)
        return error(504, "Fake upstream hang expired.")
    if behaviour.get("drop"):
        return close_connection(request, web.Response())
    if "status" in behaviour:
        status = behaviour["status"]
        resp = error(status, default_message(status))
        retry_after = behaviour.get("retry_after")
        if retry_after is not None:
            value = float(retry_after)
            resp.headers["Retry-After"] = str(int(value)) if value.is_integer() else str(value)
        return resp
    return Turn(body, behaviour)


def body_response(
    data: Any, behaviour: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """A 200 JSON answer, broken as the behaviour's ``body`` mode asks."""
    payload = orjson.dumps(data)
    mode = behaviour.get("body")
    if mode == "garbage":
        payload = b"<html>upstream exploded</html>"
    elif mode == "truncated":
        payload = payload[: len(payload) // 2]
    elif mode == "empty":
        payload = b""
    return web.Response(body=payload, content_type=JSON_TYPE, headers=headers)


def wants_stream(body: dict[str, Any], behaviour: dict[str, Any]) -> bool:
    """Whether to stream: asked for, and no broken-body mode (which forces plain JSON)."""
    return body.get("stream") is True and behaviour.get("body") is None


def sse_event(name: str, data: Any) -> bytes:
    """A named SSE event (``event:`` and ``data:`` lines)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def send_stream(
    request: web.Request,
    behaviour: dict[str, Any],
    *,
    opening: Sequence[bytes],
    content: Iterable[bytes],
    closing: Sequence[bytes],
    garbage: bytes,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Write ``opening``, ``content`` and ``closing`` events with the scripted chunk delay.

    ``stream_cut_after`` closes the connection once that many ``content`` events were sent,
    before any ``closing`` event; ``stream_garbage`` sends ``garbage`` first.
    """
    chunk_delay = behaviour.get("chunk_delay_ms", request.app[STATE].chunk_delay_ms) / 1000
    resp = web.StreamResponse(headers=headers or SSE_HEADERS)
    await resp.prepare(request)
    sent = 0

    async def emit(data: bytes) -> None:
        nonlocal sent
        if chunk_delay and sent:
            await asyncio.sleep(chunk_delay)
        sent += 1
        await resp.write(data)

    cut_after = behaviour.get("stream_cut_after")
    try:
        if behaviour.get("stream_garbage"):
            await emit(garbage)
        for event in opening:
            await emit(event)
        for i, event in enumerate(content):
            if cut_after is not None and i >= cut_after:
                return close_connection(request, resp)
            await emit(event)
        if cut_after is not None:  # the cut point lies past the last content event
            return close_connection(request, resp)
        for event in closing:
            await emit(event)
    except ConnectionResetError:
        pass  # the client went away mid-stream; nothing left to do
    return resp
