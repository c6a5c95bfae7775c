"""How OpenAI bills the tokens of a chat request, as texts to count plus fixed overheads.

The rules are those of OpenAI's cookbook ("How to count tokens with tiktoken"): each message
costs 3 tokens of framing plus its encoded values (role, content, name), a name 1 more, and
every reply is primed with 3. Function tools follow the cookbook's tool accounting. Anything
the cookbook does not document (images, tool calls inside messages, response schemas) is
counted as its JSON text and makes the result an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
IMAGE_TOKENS_LOW_DETAIL = 85  # the least an image costs; its real cost needs its size


@dataclass(frozen=True)
class ToolCosts:
    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


TOOL_COSTS = {
    "o200k_base": ToolCosts(7, 3, 3, -3, 3, 12),   # gpt-4o family in the cookbook
    "cl100k_base": ToolCosts(10, 3, 3, -3, 3, 12),  # gpt-4 / gpt-3.5-turbo
}


@dataclass(slots=True)
class ChatPieces:
    texts: list[str] = field(default_factory=list)
    constant: int = 0
    exact: bool = True


def chat_pieces(body: dict[str, Any], encoding: str) -> ChatPieces:
    """Split a chat request into the texts to encode and the tokens that are fixed."""
    if "messages" not in body and ("prompt" in body or "input" in body):
        # Embeddings, legacy completions and moderations: their input, with no framing.
        from gateway.tokens.prompt import prompt_pieces
        return prompt_pieces(body)
    out = ChatPieces()
    for message in body.get("messages") or ():
        out.constant += TOKENS_PER_MESSAGE
        if not isinstance(message, dict):
            out.exact = False
            continue
        for key, value in message.items():
            if isinstance(value, str):
                out.texts.append(value)
                if key == "name":
                    out.constant += TOKENS_PER_NAME
            elif key == "content" and isinstance(value, list):
                _content_parts(value, out)
            elif value is not None:
                out.texts.append(orjson.dumps(value).decode())
                out.exact = False
    out.constant += REPLY_PRIMING
    tools = body.get("tools") or body.get("functions")
    if tools:
        _tools(tools, TOOL_COSTS.get(encoding, TOOL_COSTS["o200k_base"]), out)
    for extra in ("response_format", "tool_choice"):
        value = body.get(extra)
        if isinstance(value, dict) and value.get("type") not in (None, "text", "json_object"):
            out.texts.append(orjson.dumps(value).decode())
            out.exact = False
    return out


def _content_parts(parts: list[Any], out: ChatPieces) -> None:
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(
                part.get("text"), str):
            out.texts.append(part["text"])
        elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
            out.constant += IMAGE_TOKENS_LOW_DETAIL
            out.exact = False
        else:
            out.texts.append(orjson.dumps(part).decode())
            out.exact = False


def _tools(tools: list[Any], costs: ToolCosts, out: ChatPieces) -> None:
    for tool in tools:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            out.texts.append(orjson.dumps(tool).decode())
            out.exact = False
            continue
        out.constant += costs.func_init
        description = str(function.get("description") or "")
        out.texts.append(f"{function['name']}:{description.removesuffix('.')}")
        parameters = function.get("parameters") or {}
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if not isinstance(properties, dict):
            continue
        if properties:
            out.constant += costs.prop_init
        for name, spec in properties.items():
            out.constant += costs.prop_key
            if not isinstance(spec, dict) or spec.get("type") in ("object", "array"):
                out.exact = False  # nested schemas are not documented
            spec = spec if isinstance(spec, dict) else {}
            enum = spec.get("enum")
            if isinstance(enum, list):
                out.constant += costs.enum_init
                for item in enum:
                    out.constant += costs.enum_item
                    out.texts.append(str(item))
            desc = str(spec.get("description") or "").removesuffix(".")
            out.texts.append(f"{name}:{spec.get('type', '')}:{desc}")
    out.constant += costs.func_end
