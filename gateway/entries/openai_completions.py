"""OpenAI's legacy Completions entry (`POST /v1/completions`), for the OpenAI SDK's
`completions.create`: instruct models (gpt-3.5-turbo-instruct, davinci-002) and the
OpenAI-compatible servers that still serve it (vLLM, Ollama).

Only OpenAI-wire providers of kind `openai` or `openai_compatible` serve it: the body goes
upstream as it is (usage asked for on streams) and the answer's bytes come back as they are,
metered from its usage, or counted where it reports none. Unknown fields pass through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway import checks
from gateway.checks import Problems, kind
from gateway.domain import ChatRequest, Usage
from gateway.entries.base import ChunkEncoder, ErrorShape, Limits, OpenAIErrors
from gateway.entries.openai_chat import OpenAIChunkEncoder

OPENAI_WIRE_KINDS = frozenset({"openai", "openai_compatible"})
UPSTREAM_PATH = "/completions"
DEFAULT_MAX_TOKENS = 16  # the API's default `max_tokens` for completions
MAX_BEST_OF = 20
MAX_LOGPROBS = 5


class OpenAICompletions:
    name = "completions"
    wire = "openai"
    path = "/v1/completions"
    pins_provider = False
    errors: ErrorShape = OpenAIErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        errors = Problems()
        model = checks.model_name(body.get("model"), "model", errors)
        prompts = prompt_count(body.get("prompt"), "prompt", limits, errors)
        for name, check in _PARAMS.items():
            if name in body and body[name] is not None:
                check(body[name], name, errors)
        stream = body.get("stream") is True
        options = body.get("stream_options")
        if options is not None and not stream:
            errors.add("stream_options", "is only allowed when stream is true")
        errors.raise_if_any()
        return ChatRequest(
            entry=self.name, provider="openai", model=model, body=body, stream=stream,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            max_output_tokens=worst_output(body, prompts),
            upstream_path=UPSTREAM_PATH, provider_kinds=OPENAI_WIRE_KINDS)

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        return orjson.dumps(completion)  # only OpenAI-wire providers serve it: never translated

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return OpenAIChunkEncoder(chat.include_usage)

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return OpenAIErrors.event(code, message, openai_type)


OPENAI_COMPLETIONS = OpenAICompletions()


def worst_output(body: dict[str, Any], prompts: int) -> int:
    """The most output tokens a call may bill: `max_tokens` (16 when unset) for each of
    `best_of` (or `n`) completions of each prompt."""
    per_choice = body.get("max_tokens") or DEFAULT_MAX_TOKENS
    choices = max(body.get("n") or 1, body.get("best_of") or 1)
    return int(per_choice) * int(choices) * max(prompts, 1)


def prompt_count(value: Any, field: str, limits: Limits, errors: Problems) -> int:
    """How many prompts `prompt` holds: a string, strings, token ids, or token-id arrays."""
    if isinstance(value, str):
        checks.within_chars(len(value), field, errors, limits.max_content_chars)
        return 1
    if not isinstance(value, list) or not value:
        errors.add(field, "is required and must be a string, an array of strings, an array "
                          f"of token ids or an array of token-id arrays, not {kind(value)}")
        return 0
    if all(_token(v) for v in value):
        return 1
    for i, item in enumerate(value):
        if isinstance(item, str):
            checks.within_chars(len(item), f"{field}[{i}]", errors, limits.max_content_chars)
        elif not (isinstance(item, list) and all(_token(t) for t in item)):
            errors.add(f"{field}[{i}]", "must be a string or an array of token ids, not "
                                        f"{kind(item)}")
    return len(value)


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


Check = Callable[[Any, str, Problems], object]
# Ranges as in OpenAI's API reference for completions.
_PARAMS: dict[str, Check] = {
    "temperature": lambda v, f, e: checks.number(v, f, e, 0, 2),
    "top_p": lambda v, f, e: checks.number(v, f, e, 0, 1),
    "presence_penalty": lambda v, f, e: checks.number(v, f, e, -2, 2),
    "frequency_penalty": lambda v, f, e: checks.number(v, f, e, -2, 2),
    "max_tokens": checks.output_tokens,
    "n": lambda v, f, e: checks.whole(v, f, e, 1, 128),
    "best_of": lambda v, f, e: checks.whole(v, f, e, 1, MAX_BEST_OF),
    "logprobs": lambda v, f, e: checks.whole(v, f, e, 0, MAX_LOGPROBS),
    "seed": lambda v, f, e: checks.whole(v, f, e, -(2**63), 2**63 - 1),
    "stop": checks.stop_sequences,
    "stream": checks.boolean,
    "echo": checks.boolean,
    "stream_options": checks.object_value,
    "logit_bias": checks.object_value,
    "suffix": checks.string_value,
    "user": checks.string_value,
}
