"""The Anthropic Messages entry shape (`POST /v1/messages`), for the official Anthropic SDK.

A request is checked as Anthropic's API checks it and translated into the OpenAI pivot; the
client's own body rides along for Anthropic providers, with what the pivot cannot carry named
in `untranslatable`. Completions, streams and errors go back in Anthropic's shapes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson

from gateway import checks
from gateway.checks import MAX_OUTPUT_TOKENS, MAX_STOP_SEQUENCES, Problems, kind
from gateway.domain import ChatRequest, Usage
from gateway.entries.base import ChunkEncoder, ErrorShape, Limits, PivotStream
from gateway.providers.anthropic import STOP_REASONS, image_url

ROLES = ("user", "assistant")
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
               529: "overloaded_error"}
# Top-level fields the pivot carries; any other one present is named in `untranslatable`.
_PIVOTED = frozenset({"model", "messages", "max_tokens", "system", "temperature", "top_p",
                      "stop_sequences", "stream", "tools", "tool_choice", "metadata",
                      "output_config"})
_NEUTRAL = {"thinking": {"type": "disabled"}}


class AnthropicErrors:
    """Anthropic's error shape, for the Anthropic SDK."""

    def body(self, request_id: str, status: int, code: str, message: str, openai_type: str,
             details: dict[str, Any]) -> bytes:
        return orjson.dumps(error_body(status, message))


class AnthropicMessages:
    name = "anthropic"
    wire = "anthropic"
    path = "/v1/messages"
    pins_provider = False
    errors: ErrorShape = AnthropicErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        return validate_messages(body, limits)

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        model = completion.get("model") if isinstance(completion.get("model"), str) else None
        return orjson.dumps(render_completion(completion, usage, model or chat.model))

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return AnthropicChunkEncoder(chat.model, request_id)

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return error_event(status, message)


ANTHROPIC_MESSAGES = AnthropicMessages()


def validate_messages(body: dict[str, Any], limits: Limits) -> ChatRequest:
    """An Anthropic Messages body, checked (one 400 naming every problem) and pivoted."""
    errors = Problems()
    model = checks.model_name(body.get("model"), "model", errors)
    if body.get("max_tokens") is None:
        errors.add("max_tokens", "is required")
    else:
        checks.whole(body["max_tokens"], "max_tokens", errors, 1, MAX_OUTPUT_TOKENS)
    _check_messages(body.get("messages"), limits, errors)
    if isinstance(body.get("system"), str | list):
        _check_content(body["system"], "system", limits, errors)
    for name, check in _CHECKS.items():
        if body.get(name) is not None:
            check(body[name], name, errors)
    errors.raise_if_any()
    pivot, lost = to_pivot(body)
    return ChatRequest(
        entry=ANTHROPIC_MESSAGES.name, provider="", model=model, body=pivot,
        stream=body.get("stream") is True, include_usage=False,
        max_output_tokens=body["max_tokens"], metadata={}, entry_wire=ANTHROPIC_MESSAGES.wire,
        native_body=body, untranslatable=tuple(lost))


# -- checks ----------------------------------------------------------------------------------

def _check_messages(value: Any, limits: Limits, errors: Problems) -> None:
    if not isinstance(value, list) or not value:
        errors.add("messages", f"is required and must be a non-empty array, not {kind(value)}")
        return
    if len(value) > limits.max_messages:
        errors.add("messages", f"must hold 1 to {limits.max_messages} messages, not {len(value)}")
        return
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            errors.add(where, f"must be an object, not {kind(message)}")
            continue
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            errors.add(f"{where}.role", "must be user or assistant")
        _check_content(message.get("content"), f"{where}.content", limits, errors)


def _check_content(content: Any, field: str, limits: Limits, errors: Problems) -> None:
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(_check_block(block, f"{field}[{j}]", errors)
                    for j, block in enumerate(content))
    else:
        errors.add(field, f"must be a string or an array of content blocks, not {kind(content)}")
        return
    if chars > limits.max_content_chars:
        errors.add(field, f"is {chars} characters; the limit is {limits.max_content_chars}")


_BLOCK_FIELDS = {"text": (("text", str),), "image": (("source", dict),),
                 "tool_use": (("id", str), ("name", str), ("input", dict)),
                 "tool_result": (("tool_use_id", str),)}


def _check_block(block: Any, field: str, errors: Problems) -> int:
    """Checks one content block; its characters of text."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        errors.add(field, "must be an object with a string type")
        return 0
    for name, expected in _BLOCK_FIELDS.get(block["type"], ()):
        if not isinstance(block.get(name), expected):
            errors.add(f"{field}.{name}",
                       f"must be {kind(expected())}, not {kind(block.get(name))}")
            return 0
    if block["type"] == "text":
        return len(block["text"])
    inner = block.get("content") if block["type"] == "tool_result" else None
    if isinstance(inner, str):
        return len(inner)
    if isinstance(inner, list):
        return sum(_check_block(b, f"{field}.content[{j}]", errors) for j, b in enumerate(inner))
    return 0


def _number(low: float, high: float) -> Callable[[Any, str, Problems], None]:
    def check(value: Any, field: str, errors: Problems) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.add(field, f"must be a number, not {kind(value)}")
        elif not low <= value <= high:
            errors.add(field, f"must be between {low:g} and {high:g}, not {value}")
    return check


def _of(expected: type, what: str) -> Callable[[Any, str, Problems], None]:
    def check(value: Any, field: str, errors: Problems) -> None:
        if not isinstance(value, expected):
            errors.add(field, f"must be {what}, not {kind(value)}")
    return check


def _system(value: Any, field: str, errors: Problems) -> None:
    if isinstance(value, list) and all(
            isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
            for b in value):
        return
    if not isinstance(value, str):
        errors.add(field, "must be a string or an array of text blocks")


def _strings(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        errors.add(field, "must be an array of strings")


def _tools(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, list):
        errors.add(field, f"must be an array, not {kind(value)}")
        return
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            errors.add(f"{field}[{i}]", "must be an object with a string name")
        elif tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"),
                                                                     dict):
            errors.add(f"{field}[{i}].input_schema", "is required and must be an object")


def _tool_choice(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, dict) or value.get("type") not in (*TOOL_CHOICES, "tool"):
        errors.add(field, "must be an object whose type is auto, any, tool or none")
    elif value["type"] == "tool" and not isinstance(value.get("name"), str):
        errors.add(f"{field}.name", "is required when type is tool")


_CHECKS: dict[str, Callable[[Any, str, Problems], object]] = {
    "system": _system,
    "temperature": _number(0, 1),
    "top_p": _number(0, 1),
    "top_k": lambda v, f, e: checks.whole(v, f, e, 0, MAX_OUTPUT_TOKENS),
    "stop_sequences": _strings,
    "stream": _of(bool, "a boolean"),
    "tools": _tools,
    "tool_choice": _tool_choice,
    "metadata": _of(dict, "an object"),
    "thinking": _of(dict, "an object"),
    "output_config": _of(dict, "an object"),
}


# -- Anthropic request -> OpenAI pivot -------------------------------------------------------

def to_pivot(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A checked Messages body as an OpenAI chat body, and the features it could not carry."""
    lost = [name for name, value in body.items() if name not in _PIVOTED
            and value is not None and _NEUTRAL.get(name) != value]
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str):
        messages.append({"role": "system", "content": system})
    elif system:
        messages.append({"role": "system", "content": [_text(b, lost) for b in system]})
    for turn in body["messages"]:
        messages.extend(_turn(turn, lost))
    pivot: dict[str, Any] = {"model": body["model"], "messages": messages,
                             "max_completion_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            pivot[name] = body[name]
    stops = body.get("stop_sequences") or []
    if len(stops) > MAX_STOP_SEQUENCES:
        lost.append(f"more than {MAX_STOP_SEQUENCES} stop_sequences")
    elif stops:
        pivot["stop"] = list(stops)
    if body.get("stream") is True:
        pivot["stream"] = True
    tools = [_tool(tool, lost) for tool in body.get("tools") or ()]
    if any(tools):
        pivot["tools"] = [tool for tool in tools if tool]
    _pivot_tool_choice(body.get("tool_choice"), pivot, lost)
    for key, value in (body.get("metadata") or {}).items():
        if key == "user_id" and isinstance(value, str):
            pivot["user"] = value
        elif value is not None:
            lost.append(f"metadata.{key}")
    for key, value in (body.get("output_config") or {}).items():
        if key == "format" and isinstance(value, dict) and value.get("type") == "json_schema":
            pivot["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": value.get("schema")}}
        elif value is not None:
            lost.append(f"output_config.{key}")
    return pivot, list(dict.fromkeys(lost))


def _text(block: dict[str, Any], lost: list[str]) -> dict[str, Any]:
    for name in ("cache_control", "citations"):
        if block.get(name):
            lost.append(name)
    return {"type": "text", "text": block["text"]}


def _turn(turn: dict[str, Any], lost: list[str]) -> list[dict[str, Any]]:
    """One Anthropic turn as OpenAI messages: tool results become tool messages first."""
    role, content = turn["role"], turn["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            parts.append(_text(block, lost))
        elif kind == "image" and role == "user" and (url := image_url(block["source"])):
            parts.append({"type": "image_url", "image_url": {"url": url}})
            if block.get("cache_control"):
                lost.append("cache_control")
        elif kind == "tool_result" and role == "user":
            out.append(_tool_result(block, lost))
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
            if block.get("cache_control"):
                lost.append("cache_control")
        elif kind == "image":
            lost.append(f"image source {block['source'].get('type')}")
        else:
            lost.append(kind if kind in ("thinking", "redacted_thinking") else f"{kind} blocks")
    if role == "assistant":
        message: dict[str, Any] = {"role": role, "content": parts or (None if calls else [])}
        if calls:
            message["tool_calls"] = calls
        return [message]
    if parts or not out:
        out.append({"role": role, "content": parts})
    return out


def _tool_result(block: dict[str, Any], lost: list[str]) -> dict[str, Any]:
    inner = block.get("content")
    parts = []
    for part in inner if isinstance(inner, list) else ():
        if part.get("type") == "text":
            parts.append(_text(part, lost))
        else:
            lost.append(f"{part.get('type')} blocks in tool results")
    content = inner if isinstance(inner, str) else parts
    if block.get("is_error"):
        lost.append("tool_result.is_error")
    if block.get("cache_control"):
        lost.append("cache_control")
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _tool(tool: dict[str, Any], lost: list[str]) -> dict[str, Any] | None:
    if tool.get("type") not in (None, "custom"):
        lost.append(f"{tool['type']} tool")
        return None
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    for key, value in tool.items():
        if key in ("description", "strict"):
            function[key] = value
        elif key not in ("name", "input_schema", "type") and value is not None:
            lost.append(key if key == "cache_control" else f"tools[].{key}")
    return {"type": "function", "function": function}


def _pivot_tool_choice(choice: Any, pivot: dict[str, Any], lost: list[str]) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice["type"]
    if kind == "tool":
        pivot["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        pivot["tool_choice"] = TOOL_CHOICES[kind]
    if choice.get("disable_parallel_tool_use") is True:
        pivot["parallel_tool_calls"] = False


# -- OpenAI answers -> Anthropic answers -----------------------------------------------------

def message_id(completion_id: Any) -> str:
    """An Anthropic-looking message id for a completion id."""
    if not isinstance(completion_id, str) or not completion_id:
        return f"msg_{uuid.uuid4().hex}"
    return completion_id if completion_id.startswith("msg_") else (
        "msg_" + completion_id.removeprefix("chatcmpl-"))


def anthropic_usage(usage: Usage) -> dict[str, int]:
    """Usage as Anthropic reports it: input_tokens leaves out cache reads and writes."""
    fresh = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
    return {"input_tokens": max(fresh, 0), "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cached_input_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens}


def render_completion(completion: dict[str, Any], usage: Usage, model: str) -> dict[str, Any]:
    """An OpenAI `chat.completion` as an Anthropic Messages response."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    texts = [text] if isinstance(text, str) else [
        p.get("text") for p in text or () if isinstance(p, dict) and p.get("type") == "text"]
    if isinstance(message.get("refusal"), str):
        texts.append(message["refusal"])
    content.extend({"type": "text", "text": t} for t in texts if isinstance(t, str) and t)
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                        "name": function.get("name") or "",
                        "input": _arguments(function.get("arguments"))})
    return {"id": message_id(completion.get("id")), "type": "message", "role": "assistant",
            "model": model, "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": anthropic_usage(usage)}


def _arguments(raw: Any) -> dict[str, Any]:
    """Tool arguments as the object Anthropic's `input` must be; kept raw when not JSON."""
    if isinstance(raw, dict):
        return raw
    try:
        parsed = orjson.loads(raw or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw_arguments": raw}
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": raw}


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class AnthropicStreamEncoder(PivotStream):
    """OpenAI chunks as Anthropic's SSE events: message_start, one content block per text run
    and per tool call (each closed when the next opens), then message_delta and message_stop."""

    def __init__(self, model: str, message_id: str, input_tokens: int = 0) -> None:
        self._model = model
        self._id = message_id
        self._input_tokens = input_tokens
        self._started = False
        self._blocks = 0  # blocks opened so far
        self._open: str | None = None  # "text" or "tool:N", the block now open
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._finish = None

    def close(self, usage: Usage, finish_reason: str | None) -> bytes:
        reason = finish_reason or self._finish or "stop"
        delta = {"stop_reason": STOP_REASONS.get(reason, "end_turn"), "stop_sequence": None}
        counts = anthropic_usage(usage)
        return b"".join((
            self._start(), self._close_block(),
            sse("message_delta", {"type": "message_delta", "delta": delta, "usage": {
                "output_tokens": counts.pop("output_tokens"), **counts}}),
            sse("message_stop", {"type": "message_stop"})))

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return sse("message_start", {"type": "message_start", "message": {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0}}})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        closing = self._close_block()
        self._open = kind
        self._blocks += 1
        return closing + sse("content_block_start", {
            "type": "content_block_start", "index": self._blocks - 1, "content_block": block})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse("content_block_stop", {"type": "content_block_stop",
                                          "index": self._blocks - 1})

    def _text(self, text: str) -> bytes:
        opening = b"" if self._open == "text" else self._open_block(
            "text", {"type": "text", "text": ""})
        return opening + sse("content_block_delta", {
            "type": "content_block_delta", "index": self._blocks - 1,
            "delta": {"type": "text_delta", "text": text}})

    def _tool(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = call.get("function") or {}
        opening = b""
        if index not in self._tools:
            opening = self._open_block(f"tool:{index}", {
                "type": "tool_use", "id": call.get("id") or f"toolu_{self._id}_{index}",
                "name": function.get("name") or "", "input": {}})
            self._tools[index] = self._blocks - 1
        arguments = function.get("arguments")
        if not arguments:
            return opening
        return opening + sse("content_block_delta", {
            "type": "content_block_delta", "index": self._tools[index],
            "delta": {"type": "input_json_delta", "partial_json": arguments}})


class AnthropicChunkEncoder:
    """OpenAI chunks as Anthropic Messages events, for the Anthropic SDK."""

    def __init__(self, model: str, request_id: str) -> None:
        self._encoder = AnthropicStreamEncoder(model, f"msg_{request_id.replace('-', '')}")
        self._finish: str | None = None

    def feed(self, chunk: dict[str, Any]) -> bytes:
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return self._encoder.feed(chunk)

    def close(self, usage: Usage, trailer: bytes) -> bytes:
        return trailer + self._encoder.close(usage, self._finish)


def error_body(status: int, message: str) -> dict[str, Any]:
    """An error in Anthropic's shape; the type follows the status, as Anthropic's does."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_event(status: int, message: str) -> bytes:
    """The same error as an `error` event, for a stream that already started."""
    return sse("error", error_body(status, message))
