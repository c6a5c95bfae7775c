"""The gateway-native entry shape (`POST /api/proxy/chat`, the seed's `GatewayChatRequest`).

Its body is strict (unknown fields are refused), names the provider itself and is translated
to OpenAI's shape; answers and streams are OpenAI's, errors the gateway's own `/api/*` shape.
"""

from __future__ import annotations

from typing import Any

from gateway import checks
from gateway.checks import Problems
from gateway.domain import ChatRequest, Usage, canonical_provider
from gateway.entries.base import ChunkEncoder, ErrorShape, GatewayErrors, Limits
from gateway.entries.openai_chat import OPENAI_CHAT, chat_messages

ROLES = frozenset({"system", "user", "assistant"})

_FIELDS = {
    # native name: (OpenAI name, check)
    "maxOutputTokens": ("max_completion_tokens", checks.output_tokens),
    "temperature": ("temperature", lambda v, f, e: checks.number(v, f, e, 0, 2)),
    "topP": ("top_p", lambda v, f, e: checks.number(v, f, e, 0, 1)),
    "presencePenalty": ("presence_penalty", lambda v, f, e: checks.number(v, f, e, -2, 2)),
    "frequencyPenalty": ("frequency_penalty", lambda v, f, e: checks.number(v, f, e, -2, 2)),
    "stop": ("stop", checks.stop_sequences),
}


class NativeChat:
    name = "native"
    wire = "openai"
    path = "/api/proxy/chat"
    pins_provider = True
    errors: ErrorShape = GatewayErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        return validate_native(body, limits, providers)

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        return OPENAI_CHAT.render(chat, completion, usage)

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return OPENAI_CHAT.stream_encoder(chat, request_id)

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return OPENAI_CHAT.error_event(status, code, message, openai_type)


NATIVE_CHAT = NativeChat()


def validate_native(body: dict[str, Any], limits: Limits, providers: frozenset[str]) -> ChatRequest:
    """The gateway-native body (seed `GatewayChatRequest`), translated to OpenAI's shape."""
    errors = Problems()
    known = {"provider", "model", "messages", "metadata", "stream", *_FIELDS}
    for name in sorted(set(body) - known):
        errors.add(name, f"unknown field; allowed: {', '.join(sorted(known))}")
    provider = body.get("provider")
    if isinstance(provider, str):
        provider = canonical_provider(provider)
    if not isinstance(provider, str) or not provider:
        errors.add("provider", "is required and must be a string")
    elif provider not in providers:
        errors.add("provider", f"{provider!r} is not configured here; "
                               f"available: {', '.join(sorted(providers))}")
    model = checks.model_name(body.get("model"), "model", errors)
    chat_messages(body.get("messages"), "messages", limits, ROLES, errors, strict=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        errors.add("stream", "must be a boolean")
    metadata = checks.json_object(body.get("metadata", {}), "metadata", errors,
                                  max_bytes=checks.MAX_METADATA_BYTES, nul_ok=True)
    upstream: dict[str, Any] = {"model": model, "messages": body.get("messages")}
    for name, (target, check) in _FIELDS.items():
        if name in body:
            check(body[name], name, errors)
            upstream[target] = body[name]
    errors.raise_if_any()
    if stream:
        upstream["stream"] = True
    return ChatRequest(
        entry=NATIVE_CHAT.name, provider=str(provider), model=model, body=upstream,
        stream=stream, include_usage=False, max_output_tokens=body.get("maxOutputTokens"),
        metadata=metadata or {})
