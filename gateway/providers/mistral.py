"""Mistral's chat completions: OpenAI's wire with a few names of its own.

Mistral reports usage in the last chunk of every stream without being asked and does not take
`stream_options`; it names the seed `random_seed` and has no `max_completion_tokens`.
"""

from __future__ import annotations

from typing import Any

from gateway.domain import ChatRequest
from gateway.providers.base import untranslatable
from gateway.providers.openai import OpenAIAdapter
from gateway.settings import ProviderSettings

# OpenAI fields Mistral's API has no counterpart for: a 400 names them rather than drop them.
UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "audio", "modalities", "prediction",
               "service_tier", "store", "reasoning_effort", "web_search_options")
# Dropped: `user` (an end-user id for OpenAI's abuse monitoring; nothing is billed by it) and
# `stream_options` (usage always comes in the last chunk).
DROPPED = ("user", "stream_options", "max_completion_tokens", "seed")


class MistralAdapter(OpenAIAdapter):
    key_env = "MISTRAL_API_KEY"

    def __init__(self, settings: ProviderSettings, name: str = "mistral") -> None:
        super().__init__(settings, name)

    def request_body(self, chat: ChatRequest) -> dict[str, Any]:
        body = chat.body
        present = [name for name in UNSUPPORTED if body.get(name) is not None]
        if present:
            raise untranslatable(present, self.name, "Mistral's chat API has no such parameter")
        out = {k: v for k, v in body.items() if k not in DROPPED}
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        if body.get("seed") is not None:
            out["random_seed"] = body["seed"]
        return out
