"""Stage 8, meter: usage from the upstream's answer, streamed or not.

`StreamMeter` sees every SSE event on its way to the client: it checks that the stream is
really SSE, takes the usage event (asked for upstream on every stream), removes it when the
client did not ask for usage itself, and holds back `data: [DONE]` so the gateway can add
its cost line first.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.domain import NO_USAGE, Usage
from gateway.errors import BadGateway
from gateway.providers.base import ProviderAdapter

DONE = b"data: [DONE]\n\n"
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')


def usage_from_body(adapter: ProviderAdapter, body: bytes) -> tuple[Usage, str | None]:
    try:
        return adapter.parse_response(body)
    except ValueError as exc:
        raise BadGateway(f"{adapter.name} upstream answered an unparseable body: {exc}",
                         code="upstream_invalid_response",
                         details={"provider": adapter.name,
                                  "body_start": body[:200].decode("utf-8", "replace")}) from None


def _event_data(event: bytes) -> Any:
    """The JSON of an event's data lines; ValueError if it has none or they are not JSON."""
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        raise ValueError("event without data")
    return orjson.loads(b"\n".join(lines))


class StreamMeter:
    def __init__(self, adapter: ProviderAdapter, keep_usage_event: bool) -> None:
        self._adapter = adapter
        self._keep_usage = keep_usage_event
        self._pending = b""
        self.events = 0
        self.usage: Usage = NO_USAGE
        self.model: str | None = None
        self.done = False
        self.started = False  # a first data event was seen and checked

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to pass on now: every complete event so far, minus the held-back ones."""
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:  # SSE allows CRLF line ends; one form keeps the parsing simple
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[:end + 2], data[end + 2:]
        if not self.started:
            self._check_first(complete)
        self.events += complete.count(b"\n\n")
        if any(marker in complete for marker in _USAGE_MARKERS) or DONE in complete:
            complete = self._filter(complete)
        return complete

    def flush(self) -> bytes:
        """What is left when the upstream closes: a trailing event without its blank line."""
        rest, self._pending = self._pending, b""
        return rest

    def _check_first(self, complete: bytes) -> None:
        """The first data event must be JSON; comments (keep-alives) before it are skipped."""
        first = next((e for e in complete.split(b"\n\n")[:-1] if not e.startswith(b":")), None)
        if first is None:
            return
        self.started = True
        try:
            event = _event_data(first)
        except ValueError as exc:
            raise BadGateway(
                f"{self._adapter.name} upstream stream is not valid SSE JSON: {exc}",
                code="upstream_invalid_response",
                details={"provider": self._adapter.name,
                         "body_start": first[:200].decode("utf-8", "replace")}) from None
        if isinstance(event, dict) and isinstance(event.get("model"), str):
            self.model = event["model"]

    def _filter(self, complete: bytes) -> bytes:
        kept = []
        for event in complete.split(b"\n\n")[:-1]:
            raw = event + b"\n\n"
            if raw == DONE:
                self.done = True
                continue
            if any(marker in event for marker in _USAGE_MARKERS):
                try:
                    data = _event_data(event)
                except ValueError:
                    kept.append(raw)
                    continue
                usage = self._adapter.stream_usage(data) if isinstance(data, dict) else None
                if usage is not None:
                    self.usage = usage
                    if not self._keep_usage and data.get("choices") == []:
                        continue  # the usage-only event the client did not ask for
            kept.append(raw)
        return b"".join(kept)
