"""The input of the OpenAI entries that take no messages, as texts to count: legacy
completions' `prompt` (and `suffix`) and moderations' `input`.

A prompt is billed as its tokens alone, with no message framing: a string, a list of strings,
or token arrays (whose length is their count). Moderation inputs may hold images, which are
not tokens of text: they make the count an estimate.
"""

from __future__ import annotations

from typing import Any

from gateway.tokens.chat import ChatPieces


def prompt_pieces(body: dict[str, Any]) -> ChatPieces:
    """The texts and fixed token counts of a body's `prompt`, `suffix` or `input`."""
    out = ChatPieces()
    value = body["prompt"] if "prompt" in body else body.get("input")
    _add(value, out)
    if isinstance(body.get("suffix"), str):
        out.texts.append(body["suffix"])
    return out


def _add(value: Any, out: ChatPieces) -> None:
    if isinstance(value, str):
        out.texts.append(value)
    elif isinstance(value, list) and value and all(_is_token(v) for v in value):
        out.constant += len(value)  # one prompt as token ids
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):  # a moderation input part
                if item.get("type") == "text" and isinstance(item.get("text"), str):
                    out.texts.append(item["text"])
                else:
                    out.exact = False
            else:
                _add(item, out)
    elif value is not None:
        out.exact = False


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
