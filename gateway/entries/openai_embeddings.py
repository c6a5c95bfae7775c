"""The OpenAI Embeddings entry shape (`POST /v1/embeddings`), for `client.embeddings.create`.

Its body is OpenAI's embeddings request, checked as OpenAI's API reference states it (`input`
a string, strings, a token array or token arrays; `dimensions`; `encoding_format` float or
base64) with unknown fields passed through. Each provider reaches it through its embeddings
adapter (`providers/embeddings.py`); answers are OpenAI's list of embeddings with the metered
usage, errors OpenAI's shape. There is no output and no stream: the budget reserves the
input's cost.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import checks
from gateway.checks import Problems, kind
from gateway.domain import ChatRequest, Usage
from gateway.entries.base import ChunkEncoder, ErrorShape, Limits, OpenAIErrors
from gateway.entries.openai_chat import OPENAI_CHAT
from gateway.providers.base import Upstream
from gateway.providers.embeddings import embeddings_upstream

MAX_INPUTS = 2048  # OpenAI's limit on the items of one request
MAX_DIMENSIONS = 65536
MAX_TOKEN_ID = 2**31 - 1
ENCODING_FORMATS = ("float", "base64")


class OpenAIEmbeddingsEntry:
    name = "embeddings"
    wire = "openai"
    path = "/v1/embeddings"
    pins_provider = False
    errors: ErrorShape = OpenAIErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        return validate_embeddings(body, limits)

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        """A translated answer, with the usage as metered (counted where none was given)."""
        completion = {k: v for k, v in completion.items() if k != "created"}
        completion["usage"] = {"prompt_tokens": usage.input_tokens,
                               "total_tokens": usage.input_tokens}
        return orjson.dumps(completion)

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return OPENAI_CHAT.stream_encoder(chat, request_id)  # never used: never streamed

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return OpenAIErrors.event(code, message, openai_type)

    def upstream(self, upstream: Upstream) -> Upstream:
        """The provider reached at its embeddings endpoint."""
        return embeddings_upstream(upstream)


OPENAI_EMBEDDINGS = OpenAIEmbeddingsEntry()


def validate_embeddings(body: dict[str, Any], limits: Limits) -> ChatRequest:
    """An OpenAI embeddings body; checked fields are checked, the rest passes through."""
    errors = Problems()
    model = checks.model_name(body.get("model"), "model", errors)
    embedding_input(body.get("input"), "input", limits, errors)
    if body.get("dimensions") is not None:
        checks.whole(body["dimensions"], "dimensions", errors, 1, MAX_DIMENSIONS)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ENCODING_FORMATS:
        errors.add("encoding_format", f"must be one of {', '.join(ENCODING_FORMATS)}")
    if body.get("user") is not None and not isinstance(body["user"], str):
        errors.add("user", "must be a string")
    if body.get("stream") not in (None, False):
        errors.add("stream", "embeddings are not streamed")
    errors.raise_if_any()
    return ChatRequest(entry=OPENAI_EMBEDDINGS.name, provider="openai", model=model, body=body,
                       stream=False, include_usage=False, max_output_tokens=0)


def embedding_input(value: Any, field: str, limits: Limits, errors: Problems) -> None:
    """A string, an array of strings, an array of token ids, or an array of such arrays;
    nothing empty."""
    if isinstance(value, str):
        _text(value, field, limits, errors)
        return
    if not isinstance(value, list) or not value:
        errors.add(field, "is required and must be a non-empty string or array (of strings, "
                          f"of token ids, or of token id arrays), not {kind(value)}")
        return
    if len(value) > MAX_INPUTS:
        errors.add(field, f"must hold at most {MAX_INPUTS} items, not {len(value)}")
        return
    if all(_token(v) for v in value):
        return  # one token array
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if isinstance(item, str):
            _text(item, where, limits, errors)
        elif isinstance(item, list):
            if not item or not all(_token(v) for v in item):
                errors.add(where, "must be a non-empty array of token ids (whole numbers "
                                  f"from 0 to {MAX_TOKEN_ID})")
        else:
            errors.add(where, f"must be a string or an array of token ids, not {kind(item)}")


def _text(value: str, field: str, limits: Limits, errors: Problems) -> None:
    if not value:
        errors.add(field, "must not be empty")
    elif len(value) > limits.max_content_chars:
        errors.add(field, f"is {len(value)} characters; the limit is {limits.max_content_chars}")


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID
