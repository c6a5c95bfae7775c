"""The OpenAI Chat Completions entry shape (`POST /v1/chat/completions`), for the OpenAI SDK.

Its body is the pivot itself: checked fields are checked and unknown ones pass through
untouched, so tools, images and response formats from real SDKs keep working. Translated
answers are the pivot's completions and chunks as they are; errors take OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway import checks
from gateway.checks import Problems, kind
from gateway.domain import ChatRequest, Usage
from gateway.entries.base import ChunkEncoder, ErrorShape, Limits, OpenAIErrors

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
DONE = b"data: [DONE]\n\n"  # the end of an OpenAI stream
# OpenAI's `metadata`: at most 16 pairs, keys up to 64 characters, string values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class OpenAIChat:
    name = "openai"
    wire = "openai"
    path = "/v1/chat/completions"
    pins_provider = False
    errors: ErrorShape = OpenAIErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        return validate_openai(body, limits)

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        return orjson.dumps(completion)

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return OpenAIChunkEncoder(chat.include_usage)

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return OpenAIErrors.event(code, message, openai_type)


OPENAI_CHAT = OpenAIChat()


def validate_openai(body: dict[str, Any], limits: Limits, provider: str = "openai") -> ChatRequest:
    """An OpenAI chat completions body; checked fields are checked, the rest passes through."""
    errors = Problems()
    model = checks.model_name(body.get("model"), "model", errors)
    chat_messages(body.get("messages"), "messages", limits, ROLES, errors, strict=False)
    for name, value in body.items():  # a body holds a few of the checked fields, not all 18
        check = _PARAMS.get(name)
        if check is not None and value is not None:
            check(value, name, errors)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        errors.add("stream_options", "is only allowed when stream is true")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    metadata = body.get("metadata")
    if metadata is not None:
        metadata = checks.string_map(
            metadata, "metadata", errors, max_pairs=MAX_METADATA_PAIRS,
            max_key_chars=MAX_METADATA_KEY, max_value_chars=MAX_METADATA_VALUE, nul_ok=True)
    errors.raise_if_any()
    max_out = body.get("max_completion_tokens") or body.get("max_tokens")
    # Positional (entry, provider, model, body, stream, include_usage, max_output_tokens,
    # metadata): every chat call makes one, and keywords cost several thousand instructions.
    return ChatRequest(OPENAI_CHAT.name, provider, model, body, stream, include_usage, max_out,
                       metadata or {})


class OpenAIChunkEncoder:
    """OpenAI chunks as `data:` events; the usage chunk only when the client asked for it."""

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if not chunk.get("choices") and not self._include_usage:
            return b""
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def close(self, usage: Usage, trailer: bytes) -> bytes:
        return trailer + DONE


# -- checks ----------------------------------------------------------------------------------

def chat_messages(value: Any, field: str, limits: Limits, roles: frozenset[str],
                  errors: Problems, *, strict: bool) -> None:
    """Chat messages in OpenAI's shape; `strict` (the native entry): string contents only,
    none empty."""
    if not isinstance(value, list):
        errors.add(field, f"is required and must be an array of messages, not {kind(value)}")
        return
    if not 1 <= len(value) <= limits.max_messages:
        errors.add(field, f"must hold 1 to {limits.max_messages} messages, not {len(value)}")
        return
    # Every call checks every message: the common one (a string content within the limit)
    # is checked here, with no field name formatted and no call made; any other goes
    # through `_content`.
    max_chars = limits.max_content_chars
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            errors.add(f"{field}[{i}]", f"must be an object, not {kind(message)}")
            continue
        role = message.get("role")
        if not isinstance(role, str) or role not in roles:
            errors.add(f"{field}[{i}].role", f"must be one of {', '.join(sorted(roles))}")
        content = message.get("content")
        if not (type(content) is str and len(content) <= max_chars and (content or not strict)):
            _content(message, f"{field}[{i}]", limits, errors, strict=strict)
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            errors.add(f"{field}[{i}].tool_call_id", "is required for tool messages")


def _content(message: dict[str, Any], where: str, limits: Limits, errors: Problems,
             *, strict: bool) -> None:
    content = message.get("content")
    field = f"{where}.content"
    if isinstance(content, str):
        if strict and not content:
            errors.add(field, "must not be empty")
        chars = len(content)
    elif isinstance(content, list) and not strict:
        chars = 0
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                errors.add(f"{field}[{j}]", "must be an object with a string type")
            elif part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    errors.add(f"{field}[{j}].text", "must be a string")
                else:
                    chars += len(part["text"])
    elif content is None and not strict and (
            message.get("role") == "assistant"
            and (message.get("tool_calls") or message.get("function_call"))):
        return  # an assistant turn that only calls tools
    else:
        expected = "a string" if strict else "a string or an array of content parts"
        errors.add(field, f"must be {expected}, not {kind(content)}")
        return
    checks.within_chars(chars, field, errors, limits.max_content_chars)


def _logit_bias(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, dict):
        errors.add(field, f"must be an object, not {kind(value)}")
        return
    for token, bias in value.items():
        checks.number(bias, f"{field}.{token}", errors, -100, 100)


Check = Callable[[Any, str, Problems], object]
# Ranges as in OpenAI's API reference for chat completions.
_PARAMS: dict[str, Check] = {
    "temperature": lambda v, f, e: checks.number(v, f, e, 0, 2),
    "top_p": lambda v, f, e: checks.number(v, f, e, 0, 1),
    "presence_penalty": lambda v, f, e: checks.number(v, f, e, -2, 2),
    "frequency_penalty": lambda v, f, e: checks.number(v, f, e, -2, 2),
    "max_tokens": checks.output_tokens,
    "max_completion_tokens": checks.output_tokens,
    "n": lambda v, f, e: checks.whole(v, f, e, 1, 128),
    "top_logprobs": lambda v, f, e: checks.whole(v, f, e, 0, 20),
    "seed": lambda v, f, e: checks.whole(v, f, e, -(2**63), 2**63 - 1),
    "stop": checks.stop_sequences,
    "stream": checks.boolean,
    "logprobs": checks.boolean,
    "parallel_tool_calls": checks.boolean,
    "stream_options": checks.object_value,
    "response_format": checks.object_value,
    "logit_bias": _logit_bias,
    "tools": checks.array_value,
    "user": lambda v, f, e: None if isinstance(v, str) else e.add(f, "must be a string"),
}
