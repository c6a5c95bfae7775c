"""Anthropic's token counting entry (`POST /v1/messages/count_tokens`), for the Anthropic
SDK's `messages.count_tokens`: a Messages body without `max_tokens`, answered
`{"input_tokens": N}`.

It is free, so it is not a proxied call like the others (`http/count_tokens.py` runs it):
relayed as it is to Anthropic for Anthropic-wire models, counted by the gateway's token
service for the others. It reserves no budget and is recorded with 0 tokens at cost 0 (a
count is not a use of the model), but it is authenticated, allow-listed, idempotent and
rate-limited like any call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.domain import ChatRequest, Usage
from gateway.entries.anthropic import ANTHROPIC_MESSAGES, AnthropicErrors, validate_messages
from gateway.entries.base import ChunkEncoder, ErrorShape, Limits

UPSTREAM_PATH = "/v1/messages/count_tokens"


class AnthropicCountTokens:
    name = "count_tokens"
    wire = "anthropic"
    path = "/v1/messages/count_tokens"
    pins_provider = False
    errors: ErrorShape = AnthropicErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        # The Messages checks, with the max_tokens a count has no use for.
        chat = validate_messages({**body, "max_tokens": 1}, limits)
        return dataclasses.replace(chat, entry=self.name, stream=False, max_output_tokens=0,
                                   native_body=body, upstream_path=UPSTREAM_PATH, free=True)

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        return ANTHROPIC_MESSAGES.render(chat, completion, usage)  # never called: free

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return ANTHROPIC_MESSAGES.stream_encoder(chat, request_id)  # never streamed

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return ANTHROPIC_MESSAGES.error_event(status, code, message, openai_type)


ANTHROPIC_COUNT_TOKENS = AnthropicCountTokens()
