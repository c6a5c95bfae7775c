"""The OpenAI Responses entry shape (`POST /v1/responses`), for `client.responses.create`.

A request is checked and translated into the OpenAI chat pivot; the client's own body rides
along and is relayed as it is to providers that serve the Responses API (OpenAI's own), with
what only that API can take (`previous_response_id`, built-in tools, `background`, ...) named
in `untranslatable`. Answers and streams from every other provider are encoded back into
Responses objects and events (`responses_output.py`); errors take OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import checks
from gateway.checks import Problems, kind
from gateway.domain import ChatRequest, Usage
from gateway.entries.base import ChunkEncoder, ErrorShape, Limits, OpenAIErrors
from gateway.entries.openai_chat import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from gateway.entries.responses_output import ResponsesStreamEncoder, render_response
from gateway.providers.openai_responses import RESPONSES_WIRE

ROLES = frozenset({"user", "assistant", "system", "developer"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})
# Top-level fields the pivot carries (or the gateway consumes); any other one set is named.
_PIVOTED = frozenset({"model", "input", "instructions", "tools", "tool_choice",
                      "max_output_tokens", "temperature", "top_p", "text", "reasoning",
                      "metadata", "stream", "stream_options", "parallel_tool_calls", "user",
                      "store", "safety_identifier", "prompt_cache_key"})
# Fields that ask for nothing at these values.
_NEUTRAL: dict[str, tuple[Any, ...]] = {"background": (False,), "truncation": ("disabled",),
                                        "include": ([],), "service_tier": ("auto", "default")}
_TEXT_PARTS = frozenset({"input_text", "output_text"})


class OpenAIResponses:
    name = "openai_responses"
    wire = RESPONSES_WIRE
    path = "/v1/responses"
    pins_provider = False
    errors: ErrorShape = OpenAIErrors()

    def parse(self, body: dict[str, Any], limits: Limits,
              providers: frozenset[str]) -> ChatRequest:
        return validate_responses(body, limits)

    def render(self, chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
        return render_response(chat, completion, usage)

    def stream_encoder(self, chat: ChatRequest, request_id: str) -> ChunkEncoder:
        return ResponsesStreamEncoder(chat, request_id)

    def error_event(self, status: int, code: str, message: str, openai_type: str) -> bytes:
        return ResponsesStreamEncoder.error(code, message)


OPENAI_RESPONSES = OpenAIResponses()


def validate_responses(body: dict[str, Any], limits: Limits) -> ChatRequest:
    """A Responses body, checked (one 400 naming every problem) and pivoted."""
    errors = Problems()
    model = checks.model_name(body.get("model"), "model", errors)
    _check_input(body.get("input"), limits, errors)
    for name, check in _CHECKS.items():
        if body.get(name) is not None:
            check(body[name], name, errors)
    metadata = body.get("metadata")
    if metadata is not None:
        metadata = checks.string_map(
            metadata, "metadata", errors, max_pairs=MAX_METADATA_PAIRS,
            max_key_chars=MAX_METADATA_KEY, max_value_chars=MAX_METADATA_VALUE, nul_ok=True)
    errors.raise_if_any()
    pivot, lost = to_pivot(body)
    return ChatRequest(
        entry=OPENAI_RESPONSES.name, provider="", model=model, body=pivot,
        stream=body.get("stream") is True, include_usage=False,
        max_output_tokens=body.get("max_output_tokens"), metadata=metadata or {},
        entry_wire=OPENAI_RESPONSES.wire, native_body=body, untranslatable=tuple(lost))


# -- checks ----------------------------------------------------------------------------------

def _check_input(value: Any, limits: Limits, errors: Problems) -> None:
    if isinstance(value, str):
        if len(value) > limits.max_content_chars:
            errors.add("input", f"is {len(value)} characters; the limit is "
                                f"{limits.max_content_chars}")
        return
    if not isinstance(value, list) or not value:
        errors.add("input", f"is required and must be a string or a non-empty array of items, "
                            f"not {kind(value)}")
        return
    if len(value) > limits.max_messages:
        errors.add("input", f"must hold 1 to {limits.max_messages} items, not {len(value)}")
        return
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            errors.add(where, f"must be an object, not {kind(item)}")
            continue
        kind_ = item.get("type", "message")
        if kind_ == "message":
            if item.get("role") not in ROLES:
                errors.add(f"{where}.role", f"must be one of {', '.join(sorted(ROLES))}")
            _check_content(item.get("content"), f"{where}.content", limits, errors)
        elif kind_ == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    errors.add(f"{where}.{name}", "is required and must be a string")
        elif kind_ == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                errors.add(f"{where}.call_id", "is required and must be a string")
            if not isinstance(item.get("output"), str | list):
                errors.add(f"{where}.output", "must be a string or an array of content parts")


def _check_content(content: Any, field: str, limits: Limits, errors: Problems) -> None:
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = 0
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                errors.add(f"{field}[{j}]", "must be an object with a string type")
            elif part["type"] in _TEXT_PARTS:
                if not isinstance(part.get("text"), str):
                    errors.add(f"{field}[{j}].text", "must be a string")
                else:
                    chars += len(part["text"])
    else:
        errors.add(field, f"must be a string or an array of content parts, not {kind(content)}")
        return
    if chars > limits.max_content_chars:
        errors.add(field, f"is {chars} characters; the limit is {limits.max_content_chars}")


def _of(expected: type | tuple[type, ...], what: str) -> Callable[[Any, str, Problems], None]:
    def check(value: Any, field: str, errors: Problems) -> None:
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            errors.add(field, f"must be {what}, not {kind(value)}")
    return check


def _tools(value: Any, field: str, errors: Problems) -> None:
    if not isinstance(value, list):
        errors.add(field, f"must be an array, not {kind(value)}")
        return
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            errors.add(f"{field}[{i}]", "must be an object with a string type")
        elif tool["type"] == "function" and not isinstance(tool.get("name"), str):
            errors.add(f"{field}[{i}].name", "is required for function tools")


def _tool_choice(value: Any, field: str, errors: Problems) -> None:
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            errors.add(field, f"must be one of {', '.join(sorted(TOOL_CHOICES))} or an object")
    elif not isinstance(value, dict) or not isinstance(value.get("type"), str):
        errors.add(field, "must be a string or an object with a string type")


_CHECKS: dict[str, Callable[[Any, str, Problems], object]] = {
    "instructions": _of(str, "a string"),
    "max_output_tokens": checks.output_tokens,
    "temperature": lambda v, f, e: checks.number(v, f, e, 0, 2),
    "top_p": lambda v, f, e: checks.number(v, f, e, 0, 1),
    "stream": _of(bool, "a boolean"),
    "parallel_tool_calls": _of(bool, "a boolean"),
    "tools": _tools,
    "tool_choice": _tool_choice,
    "text": _of(dict, "an object"),
    "reasoning": _of(dict, "an object"),
    "previous_response_id": _of(str, "a string"),
    "background": _of(bool, "a boolean"),
}


# -- Responses request -> OpenAI chat pivot ----------------------------------------------------

def to_pivot(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A checked Responses body as an OpenAI chat body, and the features it could not carry."""
    lost = [name for name, value in body.items() if name not in _PIVOTED
            and value is not None and value not in _NEUTRAL.get(name, ())]
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    source = body["input"]
    items = [{"role": "user", "content": source}] if isinstance(source, str) else source
    for i, item in enumerate(items):
        _item(item, f"input[{i}]", messages, lost)
    pivot: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("max_output_tokens") is not None:
        pivot["max_completion_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier",
                 "prompt_cache_key"):
        if body.get(name) is not None:
            pivot[name] = body[name]
    if body.get("stream") is True:
        pivot["stream"] = True
    tools = [_tool(tool, i, lost) for i, tool in enumerate(body.get("tools") or ())]
    if any(tools):
        pivot["tools"] = [tool for tool in tools if tool]
    _tool_choice_pivot(body.get("tool_choice"), pivot, lost)
    _text_pivot(body.get("text"), pivot, lost)
    reasoning = body.get("reasoning") or {}
    if reasoning.get("effort") is not None:
        pivot["reasoning_effort"] = reasoning["effort"]
    if reasoning.get("summary") is not None:
        lost.append("reasoning.summary")
    return pivot, list(dict.fromkeys(lost))


def _item(item: dict[str, Any], where: str, messages: list[dict[str, Any]],
          lost: list[str]) -> None:
    kind_ = item.get("type", "message")
    if kind_ == "message":
        messages.append({"role": item["role"],
                         "content": _content(item["content"], where, lost)})
    elif kind_ == "function_call":
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and not isinstance(
                last.get("content"), list):
            last.setdefault("tool_calls", []).append(call)  # parallel calls: one turn
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind_ == "function_call_output":
        output = item["output"]
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in output
                             if isinstance(p, dict) and p.get("type") in _TEXT_PARTS)
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    else:
        lost.append(f"{where}.type={kind_}")


def _content(content: Any, where: str, lost: list[str]) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind_ = part["type"]
        if kind_ in _TEXT_PARTS or kind_ == "refusal":
            parts.append({"type": "text", "text": part.get("text") or part.get("refusal", "")})
        elif kind_ == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") not in (None, "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            lost.append(f"{where}.content[{j}].type={kind_}"
                        + (" with file_id" if kind_ == "input_image" else ""))
    if all(p["type"] == "text" for p in parts):  # plain text: the form every provider takes
        return "".join(p["text"] for p in parts)
    return parts


def _tool(tool: dict[str, Any], i: int, lost: list[str]) -> dict[str, Any] | None:
    if tool["type"] != "function":
        lost.append(f"tools[{i}] of type {tool['type']}")
        return None
    function = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice_pivot(choice: Any, pivot: dict[str, Any], lost: list[str]) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        pivot["tool_choice"] = choice
    elif choice["type"] == "function" and isinstance(choice.get("name"), str):
        pivot["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        lost.append(f"tool_choice of type {choice['type']}")


def _text_pivot(text: Any, pivot: dict[str, Any], lost: list[str]) -> None:
    for key, value in (text or {}).items():
        if key == "format" and isinstance(value, dict):
            kind_ = value.get("type")
            if kind_ == "json_schema":
                schema = {k: value[k] for k in ("name", "schema", "strict", "description")
                          if value.get(k) is not None}
                pivot["response_format"] = {"type": "json_schema", "json_schema": schema}
            elif kind_ == "json_object":
                pivot["response_format"] = {"type": "json_object"}
            elif kind_ != "text":
                lost.append(f"text.format.type={kind_}")
        elif value is not None and not (key == "verbosity" and value == "medium"):
            lost.append(f"text.{key}")
