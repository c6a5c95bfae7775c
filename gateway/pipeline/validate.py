"""Stage 2, validate: request body -> canonical `ChatRequest` (400 with details, 413 when too big).

Two entry shapes: the OpenAI shape (`/v1/chat/completions`), whose unknown fields pass through
untouched so tools, images and response formats from real SDKs keep working, and the
gateway-native shape (`/api/proxy/chat`), which is strict and is translated to OpenAI's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import checks
from gateway.checks import Problems, kind
from gateway.domain import ChatRequest
from gateway.errors import BadRequest, PayloadTooLarge

OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
NATIVE_ROLES = frozenset({"system", "user", "assistant"})
MAX_METADATA_BYTES = 16_384
MAX_STOP_SEQUENCES = 4
MAX_MODEL_CHARS = 256
MAX_OUTPUT_TOKENS = 2**31 - 1  # the ledger's integer columns
# OpenAI's `metadata`: at most 16 pairs, keys up to 64 characters, string values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int
    max_messages: int
    max_content_chars: int


def parse_json_object(body: bytes, max_bytes: int) -> dict[str, Any]:
    """A request body that must be one JSON object of at most `max_bytes` (413 / 400)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}",
                              details={"limit_bytes": max_bytes})
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, not {kind(data)}")
    return data


def validate_openai(body: dict[str, Any], limits: Limits, provider: str = "openai") -> ChatRequest:
    """An OpenAI chat completions body; checked fields are checked, the rest passes through."""
    errors = Problems()
    model = model_name(body.get("model"), "model", errors)
    _messages(body.get("messages"), "messages", limits, OPENAI_ROLES, errors, strict=False)
    for name, check in _OPENAI_PARAMS.items():
        if name in body and body[name] is not None:
            check(body[name], name, errors)
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
    return ChatRequest(
        entry="openai", provider=provider, model=model, body=body, stream=stream,
        include_usage=include_usage, max_output_tokens=max_out,
        metadata=metadata or {})


_NATIVE_FIELDS = {
    # native name: (OpenAI name, check)
    "maxOutputTokens": ("max_completion_tokens", lambda v, f, e: _tokens(v, f, e)),
    "temperature": ("temperature", lambda v, f, e: checks.number(v, f, e, 0, 2)),
    "topP": ("top_p", lambda v, f, e: checks.number(v, f, e, 0, 1)),
    "presencePenalty": ("presence_penalty", lambda v, f, e: checks.number(v, f, e, -2, 2)),
    "frequencyPenalty": ("frequency_penalty", lambda v, f, e: checks.number(v, f, e, -2, 2)),
    "stop": ("stop", lambda v, f, e: _stop(v, f, e)),
}


def validate_native(body: dict[str, Any], limits: Limits, providers: frozenset[str]) -> ChatRequest:
    """The gateway-native body (seed `GatewayChatRequest`), translated to OpenAI's shape."""
    errors = Problems()
    known = {"provider", "model", "messages", "metadata", "stream", *_NATIVE_FIELDS}
    for name in sorted(set(body) - known):
        errors.add(name, f"unknown field; allowed: {', '.join(sorted(known))}")
    provider = body.get("provider")
    if not isinstance(provider, str) or not provider:
        errors.add("provider", "is required and must be a string")
    elif provider not in providers:
        errors.add("provider", f"{provider!r} is not configured here; "
                               f"available: {', '.join(sorted(providers))}")
    model = model_name(body.get("model"), "model", errors)
    _messages(body.get("messages"), "messages", limits, NATIVE_ROLES, errors, strict=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        errors.add("stream", "must be a boolean")
    metadata = checks.json_object(body.get("metadata", {}), "metadata", errors,
                                  max_bytes=MAX_METADATA_BYTES, nul_ok=True)
    upstream: dict[str, Any] = {"model": model, "messages": body.get("messages")}
    for name, (target, check) in _NATIVE_FIELDS.items():
        if name in body:
            check(body[name], name, errors)
            upstream[target] = body[name]
    errors.raise_if_any()
    if stream:
        upstream["stream"] = True
    return ChatRequest(
        entry="native", provider=str(provider), model=model, body=upstream, stream=stream,
        include_usage=False, max_output_tokens=body.get("maxOutputTokens"),
        metadata=metadata or {})


MAX_REQUEST_ID = 128


def client_request_id(value: str | None) -> str | None:
    """`X-Request-Id`: the client's idempotency key, at most 128 characters."""
    if value is None:
        return None
    if not value.strip() or len(value) > MAX_REQUEST_ID:
        raise BadRequest(f"X-Request-Id must be 1 to {MAX_REQUEST_ID} characters",
                         details={"field": "X-Request-Id", "length": len(value)})
    return value


def parse_metadata_header(value: str | None) -> dict[str, Any]:
    """`X-AI-Cost-Gateway-Metadata: {json}`: metadata for SDKs that cannot add body fields."""
    if not value:
        return {}
    errors = Problems()
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise checks.invalid("X-AI-Cost-Gateway-Metadata", "must be a JSON object") from None
    checks.json_object(data, "X-AI-Cost-Gateway-Metadata", errors, max_bytes=MAX_METADATA_BYTES,
                       nul_ok=True)
    errors.raise_if_any()
    return dict(data)


# -- field checks ----------------------------------------------------------------------------

def model_name(value: Any, field: str, errors: Problems) -> str:
    """The `model` every entry shape requires: a non-empty string of at most 256 characters."""
    if not isinstance(value, str) or not value.strip():
        errors.add(field, f"is required and must be a non-empty string, not {kind(value)}")
        return ""
    if len(value) > MAX_MODEL_CHARS:  # a NUL is made storable by the usage row itself
        errors.add(field, f"must be at most {MAX_MODEL_CHARS} characters")
    return value


def _tokens(value: Any, field: str, errors: Problems) -> None:
    checks.whole(value, field, errors, 1, MAX_OUTPUT_TOKENS)


def _messages(value: Any, field: str, limits: Limits, roles: frozenset[str], errors: Problems,
              *, strict: bool) -> None:
    if not isinstance(value, list):
        errors.add(field, f"is required and must be an array of messages, not {kind(value)}")
        return
    if not 1 <= len(value) <= limits.max_messages:
        errors.add(field, f"must hold 1 to {limits.max_messages} messages, not {len(value)}")
        return
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            errors.add(where, f"must be an object, not {kind(message)}")
            continue
        role = message.get("role")
        if not isinstance(role, str) or role not in roles:
            errors.add(f"{where}.role", f"must be one of {', '.join(sorted(roles))}")
        _content(message, where, limits, errors, strict=strict)
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            errors.add(f"{where}.tool_call_id", "is required for tool messages")


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
    if chars > limits.max_content_chars:
        errors.add(field, f"is {chars} characters; the limit is {limits.max_content_chars}")


def _bool(value: Any, field: str, errors: Problems) -> None:
    checks.flag(value, field, errors, f"must be a boolean, not {kind(value)}")


def _stop(value: Any, field: str, errors: Problems) -> None:
    if isinstance(value, str):
        return
    if (not isinstance(value, list) or not 1 <= len(value) <= MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) for s in value)):
        errors.add(field, f"must be a string or an array of 1 to {MAX_STOP_SEQUENCES} strings")


def _object(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, dict):
        errors.add(field, f"must be an object, not {kind(value)}")


def _array(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, list):
        errors.add(field, f"must be an array, not {kind(value)}")


def _logit_bias(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, dict):
        errors.add(field, f"must be an object, not {kind(value)}")
        return
    for token, bias in value.items():
        checks.number(bias, f"{field}.{token}", errors, -100, 100)


Check = Callable[[Any, str, Problems], object]
# Ranges as in OpenAI's API reference for chat completions.
_OPENAI_PARAMS: dict[str, Check] = {
    "temperature": lambda v, f, e: checks.number(v, f, e, 0, 2),
    "top_p": lambda v, f, e: checks.number(v, f, e, 0, 1),
    "presence_penalty": lambda v, f, e: checks.number(v, f, e, -2, 2),
    "frequency_penalty": lambda v, f, e: checks.number(v, f, e, -2, 2),
    "max_tokens": _tokens,
    "max_completion_tokens": _tokens,
    "n": lambda v, f, e: checks.whole(v, f, e, 1, 128),
    "top_logprobs": lambda v, f, e: checks.whole(v, f, e, 0, 20),
    "seed": lambda v, f, e: checks.whole(v, f, e, -(2**63), 2**63 - 1),
    "stop": _stop,
    "stream": _bool,
    "logprobs": _bool,
    "parallel_tool_calls": _bool,
    "stream_options": _object,
    "response_format": _object,
    "logit_bias": _logit_bias,
    "tools": _array,
    "user": lambda v, f, e: None if isinstance(v, str) else e.add(f, "must be a string"),
}
