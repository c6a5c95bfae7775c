"""Streams and answers between a provider's wire and the client's entry shape.

OpenAI-wire providers called through OpenAI's shapes take the fast path in `meter.py` (the
bytes pass through, only the usage event is looked at). Every other pair goes through here:
`EventStream` splits the provider's SSE into events, hands each to the adapter's translator
(which keeps the usage) and either relays the event's own bytes (the client speaks the
provider's wire: Anthropic SDK to Anthropic) or encodes the translator's OpenAI chunks in the
client's shape (the entry's `ChunkEncoder`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.domain import ChatRequest, Usage
from gateway.entries.base import ChunkEncoder
from gateway.errors import BadGateway
from gateway.pipeline.meter import completion_texts, split_events
from gateway.providers.base import ProviderAdapter


def stamp(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """Fields OpenAI clients rely on, where a translation left them out."""
    completion.setdefault("object", "chat.completion")
    completion.setdefault("created", int(time.time()))
    completion.setdefault("model", model)
    return completion


class EventStream:
    """One upstream SSE stream, event by event: translated, or relayed and metered."""

    def __init__(self, adapter: ProviderAdapter, chat: ChatRequest,
                 encoder: ChunkEncoder) -> None:
        self._adapter = adapter
        self._translator = adapter.stream_translator(chat)
        self._encoder = encoder
        self.passthrough = adapter.wire == chat.entry_wire
        self._pending = b""
        self._chunks: list[dict[str, Any]] = []  # every OpenAI chunk, for counting if need be
        self.started = False
        self.done = False

    @property
    def usage(self) -> Usage:
        return self._translator.usage

    @property
    def model(self) -> str | None:
        return self._translator.model

    def feed(self, data: bytes) -> bytes:
        complete, self._pending = split_events(self._pending, data)
        out = []
        for raw in complete.split(b"\n\n")[:-1]:
            out.append(self._event(raw))
        return b"".join(out)

    def finish(self, trailer: bytes) -> bytes:
        """The upstream ended: a trailing event, what the translator still owes, the end."""
        out = self._event(self._pending.rstrip(b"\n")) if self._pending.strip() else b""
        self._pending = b""
        chunks = self._translator.close()
        self._chunks.extend(chunks)
        if self.passthrough:
            return out + trailer
        return out + b"".join(self._encoder.feed(c) for c in chunks) + self._encoder.close(
            self.usage, trailer)

    def _event(self, raw: bytes) -> bytes:
        name, lines = None, []
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                lines.append(line[5:].strip())
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        if not lines:
            return raw + b"\n\n" if self.passthrough and raw else b""  # comments, keep-alives
        payload = b"\n".join(lines)
        if payload == b"[DONE]":
            self.done = True
            return b""  # the gateway ends the stream itself, after its cost line
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if self.started:
                return b""  # one bad event mid-stream is skipped, not fatal
            raise BadGateway(
                f"{self._adapter.name} upstream stream is not valid SSE JSON: {exc}",
                code="upstream_invalid_response",
                details={"provider": self._adapter.name,
                         "body_start": raw[:200].decode("utf-8", "replace")}) from None
        self.started = True
        chunks = self._translator.feed(name, event)
        self._chunks.extend(chunks)
        if self.passthrough:
            return raw + b"\n\n"
        return b"".join(self._encoder.feed(c) for c in chunks)

    def output_texts(self) -> list[str]:
        """The text generated so far, one string per choice and field, deltas joined."""
        texts: dict[tuple[Any, ...], list[str]] = {}
        for chunk in self._chunks:
            for key, text in completion_texts(chunk.get("choices"), "delta"):
                texts.setdefault(key, []).append(text)
        return ["".join(parts) for parts in texts.values()]
