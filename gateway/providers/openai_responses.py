"""OpenAI's Responses API (`POST {base}/responses`), relayed: the second API an OpenAI
provider serves, as `OpenAIAdapter.relay("openai_responses")`.

A Responses request from the Responses entry is sent as the client wrote it (with the routed
model) and its answer relayed byte for byte; this adapter only reads the usage (`usage` of the
response object; on streams, of the `response.completed` event) and, to count tokens where no
usage came, reads the answer as the OpenAI chat pivot.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadGateway, BadRequest, UpstreamStatusError
from gateway.providers.base import Credential, UpstreamCall

RESPONSES_WIRE = "openai_responses"
# The events that end a Responses stream, each carrying the final response object.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIWire(Protocol):
    """What the relay borrows from the OpenAI adapter it extends."""

    name: str

    def require_key(self, credential: Credential) -> None: ...

    def headers(self, credential: Credential) -> dict[str, str]: ...

    def map_error(self, status: int, body: bytes,
                  headers: dict[str, str]) -> UpstreamStatusError: ...


class OpenAIResponsesAdapter:
    wire = RESPONSES_WIRE

    def __init__(self, openai: OpenAIWire) -> None:
        self._openai = openai
        self.name = openai.name

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        if chat.native_body is None or chat.entry_wire != self.wire:
            raise BadRequest(f"provider {self.name} takes Responses requests only here",
                             code="untranslatable_feature")
        self._openai.require_key(credential)
        body = {**chat.native_body, "model": chat.body["model"]}
        return UpstreamCall(credential.base_url.rstrip("/") + "/responses",
                            self._openai.headers(credential), orjson.dumps(body))

    def stored_call(self, credential: Credential, path: str) -> UpstreamCall:
        """A call on a stored response (`path`: `/responses/{id}...`); it has no body."""
        self._openai.require_key(credential)
        return UpstreamCall(credential.base_url.rstrip("/") + path,
                            self._openai.headers(credential), b"")

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = _response(body)
        model = data.get("model")
        return responses_usage(data.get("usage")) or NO_USAGE, (
            model if isinstance(model, str) else None)

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        return to_completion(_response(body))

    def stream_translator(self, chat: ChatRequest) -> ResponsesStreamTranslator:
        return ResponsesStreamTranslator(self.name)

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        response = event.get("response")
        if event.get("type") not in FINAL_EVENTS or not isinstance(response, dict):
            return None
        return responses_usage(response.get("usage"))

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        return self._openai.map_error(status, body, headers)


def _response(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict) or data.get("object") != "response":
        raise ValueError("not a response object")
    return data


def responses_usage(usage: Any) -> Usage | None:
    """A Responses `usage` object as the gateway's Usage (cached tokens are part of input)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(input_tokens=_count(usage.get("input_tokens")), cached_input_tokens=_count(cached),
                 output_tokens=_count(usage.get("output_tokens")))


def to_completion(response: dict[str, Any]) -> dict[str, Any]:
    """A response object as an OpenAI `chat.completion` (its text and function calls)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts.extend(part["text"] for part in item.get("content") or ()
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function", "function": {
                "name": item.get("name"), "arguments": item.get("arguments") or ""}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return {"id": response.get("id"), "object": "chat.completion",
            "model": response.get("model"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if calls else "stop"}]}


class ResponsesStreamTranslator:
    """Responses stream events as pivot chunks (text and argument deltas), keeping usage."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self.usage: Usage = NO_USAGE
        self.model: str | None = None

    def feed(self, event: str | None, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        response = data.get("response")
        if isinstance(response, dict):
            if isinstance(response.get("model"), str):
                self.model = response["model"]
            if kind in FINAL_EVENTS:
                self.usage = responses_usage(response.get("usage")) or self.usage
        if kind == "error":
            raise BadGateway(f"{self._provider} upstream stream failed: {data.get('message')}",
                             code="upstream_stream_error", details={"provider": self._provider})
        delta = data.get("delta")
        if not isinstance(delta, str):
            return []
        if kind == "response.output_text.delta":
            return [_chunk({"content": delta})]
        if kind == "response.function_call_arguments.delta":
            index = data.get("output_index", 0)
            return [_chunk({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})]
        return []

    def close(self) -> list[dict[str, Any]]:
        return []


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
