"""Entry shapes, one file each behind `base.Entry`: the request shapes clients send."""

from __future__ import annotations

from gateway.entries.anthropic import ANTHROPIC_MESSAGES
from gateway.entries.base import Entry, ErrorShape, GatewayErrors, OpenAIErrors
from gateway.entries.native import NATIVE_CHAT
from gateway.entries.openai_chat import OPENAI_CHAT
from gateway.entries.openai_completions import OPENAI_COMPLETIONS
from gateway.entries.openai_embeddings import OPENAI_EMBEDDINGS
from gateway.entries.openai_moderations import OPENAI_MODERATIONS
from gateway.entries.openai_responses import OPENAI_RESPONSES

# Each is served at its `path` (routes.py) and runs the whole pipeline.
ENTRIES: tuple[Entry, ...] = (OPENAI_CHAT, ANTHROPIC_MESSAGES, NATIVE_CHAT, OPENAI_RESPONSES,
                              OPENAI_EMBEDDINGS, OPENAI_COMPLETIONS, OPENAI_MODERATIONS)

_OPENAI_ERRORS, _GATEWAY_ERRORS = OpenAIErrors(), GatewayErrors()


def error_shape(path: str) -> ErrorShape:
    """The shape errors on `path` answer in: that of the entry the path starts with (so a
    404 under `/v1/messages` reads as Anthropic's), else OpenAI's on `/v1/*`, else the
    gateway's own."""
    for entry in ENTRIES:
        if path.startswith(entry.path):
            return entry.errors
    return _OPENAI_ERRORS if path.startswith("/v1/") else _GATEWAY_ERRORS
