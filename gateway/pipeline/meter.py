"""Stage 8, meter: usage from the upstream's answer, streamed or not.

`StreamMeter` sees every SSE event on its way to the client: it checks that the stream is
really SSE, takes the usage event (asked for upstream on every stream), removes it when the
client did not ask for usage itself, and holds back `data: [DONE]` so the gateway can add
its cost line first. It keeps what it passed on, so that a stream without a usage report,
or one the client cut short, is metered by counting the tokens actually sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.entries.openai_chat import DONE
from gateway.errors import BadGateway
from gateway.providers.base import ProviderAdapter
from gateway.tokens.service import TokenService

_USAGE_MARKERS = (b'"usage":{', b'"usage": {')


def usage_from_body(adapter: ProviderAdapter, body: bytes) -> tuple[Usage, str | None]:
    try:
        return adapter.parse_response(body)
    except ValueError as exc:
        raise BadGateway(f"{adapter.name} upstream answered an unparseable body: {exc}",
                         code="upstream_invalid_response",
                         details={"provider": adapter.name,
                                  "body_start": body[:200].decode("utf-8", "replace")}) from None


def completion_from_body(adapter: ProviderAdapter, body: bytes,
                         chat: ChatRequest) -> dict[str, Any]:
    """A complete answer as an OpenAI completion object (502 if it cannot be read)."""
    try:
        return adapter.to_openai(body, chat)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadGateway(f"{adapter.name} upstream answered an unreadable body: {exc!r}",
                         code="upstream_invalid_response",
                         details={"provider": adapter.name,
                                  "body_start": body[:200].decode("utf-8", "replace")}) from None


def split_events(pending: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """(every complete SSE event so far, the incomplete rest) of what was pending plus a new
    chunk; CRLF line ends become LF (SSE allows both; one form keeps the parsing simple)."""
    data = pending + chunk if pending else chunk
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    end = data.rfind(b"\n\n")
    if end < 0:
        return b"", data
    return data[:end + 2], data[end + 2:]


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
        self._seen: list[bytes] = []  # complete events so far, for counting if need be

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to pass on now: every complete event so far, minus the held-back ones."""
        complete, self._pending = split_events(self._pending, chunk)
        if not complete:
            return b""
        self._seen.append(complete)
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


    def output_texts(self) -> list[str]:
        """The text generated so far, one string per choice and field, deltas joined."""
        texts: dict[tuple[Any, ...], list[str]] = {}
        for event in b"".join(self._seen).split(b"\n\n"):
            if not event.startswith(b"data:") or event == DONE[:-2]:
                continue
            try:
                data = _event_data(event)
            except ValueError:
                continue
            if isinstance(data, dict):
                for key, text in completion_texts(data.get("choices"), "delta"):
                    texts.setdefault(key, []).append(text)
        return ["".join(parts) for parts in texts.values()]


def completion_texts(choices: Any, key: str) -> list[tuple[tuple[Any, ...], str]]:
    """Generated text of a completion's (`message`) or a chunk's (`delta`) choices, each
    keyed by where it belongs (choice, field, tool call), so stream deltas can be joined."""
    texts: list[tuple[tuple[Any, ...], str]] = []
    for n, choice in enumerate(choices if isinstance(choices, list) else ()):
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            texts.append(((choice.get("index", n), "text"), choice["text"]))  # legacy
            continue
        part = choice.get(key) if isinstance(choice, dict) else None
        if not isinstance(part, dict):
            continue
        index = choice.get("index", n)
        for field in ("content", "refusal", "reasoning_content"):
            if isinstance(part.get(field), str):
                texts.append(((index, field), part[field]))
        for m, call in enumerate(part.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                where = (index, "tool", call.get("index", m))
                texts.extend(((*where, name), v) for name in ("name", "arguments")
                             if isinstance(v := function.get(name), str))
    return texts


async def fill_missing_usage(chat: ChatRequest, usage: Usage, output: list[str] | None,
                             tokens: TokenService) -> Usage:
    """Count the sides the provider did not report: the request, and the text generated.

    `output` is None when nothing is known of the answer (then only the input is counted).
    """
    if usage.input_source != "none" and (usage.output_source != "none" or output is None):
        return usage
    tokenizer = tokens.tokenizer(chat.model)
    kind = "counted" if tokenizer.exact else "estimated"
    input_tokens, cached, input_source = (usage.input_tokens, usage.cached_input_tokens,
                                          usage.input_source)
    if input_source == "none":
        counted = await tokens.count_chat(chat.body, chat.model)
        input_tokens, cached = counted.tokens, 0
        input_source = "counted" if counted.exact else "estimated"
    output_tokens, output_source = usage.output_tokens, usage.output_source
    if output_source == "none" and output is not None:
        counts, _ = await tokens.count_for_model(output, chat.model) if output else ([], None)
        output_tokens, output_source = sum(counts), kind
    return Usage(input_tokens, cached, output_tokens, input_source, output_source)
