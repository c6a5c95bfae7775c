"""The entry seam: one `Entry` per request shape clients send, as `providers/base.py` has one
adapter per provider.

An entry checks its body into the canonical `ChatRequest` (whose `body` is the OpenAI pivot
every adapter translates from), encodes translated answers and streams back into its own
shape, and answers errors in its own shape. The pipeline is handed the entry object; it never
asks which one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from gateway.domain import ChatRequest, Usage

if TYPE_CHECKING:
    from gateway.providers.base import Upstream


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a request body, from the settings."""

    max_body_bytes: int
    max_messages: int
    max_content_chars: int


class ChunkEncoder(Protocol):
    """OpenAI `chat.completion.chunk` dicts, translated from a provider's stream, as the
    client's own stream events."""

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def close(self, usage: Usage, trailer: bytes) -> bytes:
        """The stream ended: `trailer` (the cost line) and the shape's own ending."""
        ...


class PivotStream:
    """What an entry's stream encoder shares: reading OpenAI chat chunks (the pivot) and
    handing their text and tool-call deltas, in order, to its own `_text` and `_tool`, after
    its `_start`; the finish reason is kept for `close`."""

    _finish: str | None = None

    def _start(self) -> bytes:
        raise NotImplementedError

    def _text(self, text: str) -> bytes:
        raise NotImplementedError

    def _tool(self, call: Any) -> bytes:
        raise NotImplementedError

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = [self._start()]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for text in (delta.get("content"), delta.get("refusal")):
                if isinstance(text, str) and text:
                    out.append(self._text(text))
            for call in delta.get("tool_calls") or ():
                out.append(self._tool(call))
            self._finish = choice.get("finish_reason") or self._finish
        return b"".join(out)


class ErrorShape(Protocol):
    """How an error answer's body looks to one kind of client."""

    def body(self, request_id: str, status: int, code: str, message: str, openai_type: str,
             details: dict[str, Any]) -> bytes: ...


class Entry(Protocol):
    """One request shape (`POST path`): its checks, its answers, its errors."""

    name: str  # recorded as `ChatRequest.entry`
    wire: str  # the wire it speaks (one of `providers.base.WIRES`): relayed as is to that wire
    path: str  # its route; errors under it answer in its shape
    pins_provider: bool  # the body names the provider (no routing by model name)
    errors: ErrorShape

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        """A body as a `ChatRequest`, or one 400 naming every problem."""
        ...

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        """A translated OpenAI `chat.completion` as this shape's answer."""
        ...

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        """A fresh encoder for one translated stream."""
        ...

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        """An error as a stream event, for a stream that already started."""
        ...


@runtime_checkable
class OwnEndpoint(Protocol):
    """An optional ability: an entry served by another endpoint of each provider's API than
    chat (embeddings, ...), reached through the provider's upstream as it adapts it."""

    def upstream(self, upstream: Upstream) -> Upstream: ...


class GatewayErrors:
    """The gateway's own error shape, on `/api/*`: `{"error", "code", "requestId", "details"}`."""

    def body(self, request_id: str, status: int, code: str, message: str, openai_type: str,
             details: dict[str, Any]) -> bytes:
        return orjson.dumps({"error": message, "code": code, "requestId": request_id,
                             "details": details}, default=str)


class OpenAIErrors:
    """OpenAI's error shape, on `/v1/*`: `{"error": {"message", "type", "code", "param"}}`."""

    def body(self, request_id: str, status: int, code: str, message: str, openai_type: str,
             details: dict[str, Any]) -> bytes:
        return orjson.dumps({"error": {"message": message, "type": openai_type, "code": code,
                                       "param": details.get("field")}})

    @staticmethod
    def event(code: str, message: str, openai_type: str) -> bytes:
        """The same error as a `data:` event of an OpenAI stream."""
        error = {"message": message, "type": openai_type, "code": code}
        return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
