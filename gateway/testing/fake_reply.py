"""The deterministic reply every fake provider route gives, and the token counting helpers.

* The reply is N words ``w1 w2 ... wN`` (or the scripted ``reply`` split on spaces); each
  word is exactly one output token.
* N = min(the request's output token limit, when given; ``reply_tokens``). The reply ends
  with ``LENGTH`` when that limit cut it short, else ``STOP``.
* A stop sequence that equals a whole reply word ends the reply just before that word
  (``STOP_SEQUENCE``), unless the token limit ended it earlier.
* A tool call answers when the request offers tools and its last user text contains
  "use tool": the arguments are ``tool_arguments(schema)`` and its output tokens are the
  o200k tokens of their compact JSON (``json_token_pieces``), streamed one token a delta.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

STOP = "stop"
LENGTH = "length"
STOP_SEQUENCE = "stop_sequence"
TOOL_TRIGGER = "use tool"


@functools.cache
def o200k() -> tiktoken.Encoding:
    from gateway.tokens.encodings import load_encoding  # offline, from the bundled BPE file

    return load_encoding("o200k_base")


def count_text_tokens(texts: Iterable[str]) -> int:
    """The o200k tokens of each text, encoded separately, summed."""
    encode = o200k().encode_ordinary
    return sum(len(encode(text)) for text in texts)


@dataclass(slots=True)
class Reply:
    """The reply words and why they ended (STOP, LENGTH or STOP_SEQUENCE)."""

    words: list[str]
    finish: str
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def pieces(self) -> list[str]:
        """The streamed text deltas: one word each, a space after all but the last."""
        # A list built in one go: this is on the OpenAI route's (the benchmark's) hot path.
        return [word + " " for word in self.words[:-1]] + self.words[-1:]


def plan_reply(
    behaviour: dict[str, Any],
    default_tokens: int,
    limit: int | None = None,
    stop_sequences: Sequence[str] = (),
) -> Reply:
    """The reply for one turn (see the module docstring for the rule)."""
    if "reply" in behaviour:
        words = behaviour["reply"].split()
    else:
        n = behaviour.get("reply_tokens", default_tokens)
        words = [f"w{i}" for i in range(1, n + 1)]
    stop_at = None
    if stop_sequences:
        stop_at = next((i for i, word in enumerate(words) if word in stop_sequences), None)
    if limit is not None and limit < len(words) and (stop_at is None or limit <= stop_at):
        return Reply(words[:limit], LENGTH)
    if stop_at is not None:
        return Reply(words[:stop_at], STOP_SEQUENCE, words[stop_at])
    return Reply(words, STOP)


def asks_for_tool(text: str) -> bool:
    """Whether a user text triggers the fake's tool call."""
    return TOOL_TRIGGER in text.lower()


_SAMPLE_VALUES: dict[str, Any] = {
    "string": "fake",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


def tool_arguments(schema: Any) -> dict[str, Any]:
    """Deterministic arguments for a JSON schema: one sample value per declared property."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    arguments: dict[str, Any] = {}
    for name, spec in properties.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        # Gemini spells schema types in upper case ("STRING").
        arguments[name] = _SAMPLE_VALUES.get(kind.lower()) if isinstance(kind, str) else None
    return arguments


def json_token_pieces(value: Any) -> list[str]:
    """The compact JSON of ``value`` split into its o200k tokens (one streamed delta each)."""
    encoding = o200k()
    return [encoding.decode([token]) for token in encoding.encode_ordinary(compact_json(value))]


def compact_json(value: Any) -> str:
    return orjson.dumps(value).decode()
