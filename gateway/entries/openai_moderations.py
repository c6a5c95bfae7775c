"""OpenAI's Moderations entry (`POST /v1/moderations`), for the OpenAI SDK's
`moderations.create`.

OpenAI serves it free: the call is relayed as it is to OpenAI (kind `openai` only), its
input counted by the gateway's tokenizer (the answer reports no usage) and priced at the
table's zero price, so it still takes a rate-limit slot and leaves one ledger row at cost 0.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import checks
from gateway.checks import Problems, kind
from gateway.domain import ChatRequest, Usage
from gateway.entries.base import ChunkEncoder, ErrorShape, Limits, OpenAIErrors
from gateway.entries.openai_chat import OpenAIChunkEncoder

DEFAULT_MODEL = "omni-moderation-latest"  # the API's default when `model` is left out


class OpenAIModerations:
    name = "moderations"
    wire = "openai"
    path = "/v1/moderations"
    pins_provider = False
    errors: ErrorShape = OpenAIErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        errors = Problems()
        if body.get("model") is None:
            body = {**body, "model": DEFAULT_MODEL}
        model = checks.model_name(body.get("model"), "model", errors)
        _input(body.get("input"), "input", limits, errors)
        errors.raise_if_any()
        return ChatRequest(
            entry=self.name, provider="openai", model=model, body=body, stream=False,
            include_usage=False, max_output_tokens=None, upstream_path="/moderations",
            provider_kinds=frozenset({"openai"}))

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        return orjson.dumps(completion)  # only OpenAI serves it: never translated

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return OpenAIChunkEncoder(False)  # never streamed

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return OpenAIErrors.event(code, message, openai_type)


OPENAI_MODERATIONS = OpenAIModerations()


def _input(value: Any, field: str, limits: Limits, errors: Problems) -> None:
    """A string, an array of strings, or an array of text / image_url parts."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        errors.add(field, "is required and must be a string, an array of strings or an "
                          f"array of input parts, not {kind(value)}")
        return
    for i, item in enumerate(items):
        where = field if isinstance(value, str) else f"{field}[{i}]"
        if isinstance(item, str):
            if len(item) > limits.max_content_chars:
                errors.add(where, f"is {len(item)} characters; the limit is "
                                  f"{limits.max_content_chars}")
        elif not (isinstance(item, dict) and item.get("type") in ("text", "image_url")):
            errors.add(where, "must be a string or an object of type text or image_url")
