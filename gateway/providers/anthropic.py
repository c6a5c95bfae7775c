"""Anthropic Messages (`POST /v1/messages`), to and from the OpenAI pivot.

Requests from the Anthropic entry shape are sent as the client wrote them (pass-through, with
the routed model). Any other request is translated from the OpenAI-shaped body; a field with
no Anthropic counterpart is a 400 naming it. Answers and SSE events come back as OpenAI
completions and chunks. The tables and block helpers here are shared with
`gateway.entries.anthropic`, which translates the other way.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadGateway, BadRequest, UpstreamStatusError
from gateway.providers.base import (
    Credential,
    UpstreamCall,
    body_message,
    require_key,
    upstream_error,
)
from gateway.providers.base import untranslatable as base_untranslatable
from gateway.settings import ProviderSettings

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out
MAX_TEMPERATURE = 1.0  # OpenAI allows 0..2, Anthropic 0..1
_KEYED_HOSTS = frozenset({"api.anthropic.com"})

# stop_reason -> OpenAI finish_reason, and back.
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
# Anthropic error type -> OpenAI error type, where OpenAI has one of its own.
ERROR_TYPES = {"request_too_large": "invalid_request_error", "billing_error": "insufficient_quota",
               "overloaded_error": "api_error"}

# OpenAI fields translated below, and fields the gateway consumes itself (never sent).
_TRANSLATED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "stream", "tools", "tool_choice", "parallel_tool_calls", "user", "response_format"})
_TRANSPORT = frozenset({"stream_options", "metadata"})
# Fields that only matter away from their default: the default itself is no feature.
_NEUTRAL: dict[str, Any] = {"n": 1, "logprobs": False, "top_logprobs": 0, "presence_penalty": 0,
                            "frequency_penalty": 0, "logit_bias": {}, "modalities": ["text"],
                            "store": False}


def untranslatable(features: list[str], provider: str, why: str = "") -> BadRequest:
    """The 400 for features Anthropic's API has no counterpart for."""
    return base_untranslatable(features, provider,
                               why or "Anthropic's Messages API has no counterpart")


class AnthropicAdapter:
    wire = "anthropic"
    key_env = "ANTHROPIC_API_KEY"

    def __init__(self, settings: ProviderSettings, name: str = "anthropic") -> None:
        self.name = name
        self.settings = settings

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        base = credential.base_url.rstrip("/")
        require_key(self.name, credential, _KEYED_HOSTS, self.key_env)
        headers = {"anthropic-version": API_VERSION, "content-type": "application/json"}
        if credential.api_key:
            headers["x-api-key"] = credential.api_key
        path = chat.upstream_path or "/v1/messages"  # or count_tokens, relayed as it is
        return UpstreamCall(f"{base}{path}", headers, orjson.dumps(self.request_body(chat)))

    def request_body(self, chat: ChatRequest) -> dict[str, Any]:
        """The Messages request: the client's own body when it spoke Anthropic, else a
        translation of the OpenAI-shaped body."""
        if chat.entry_wire == self.wire and chat.native_body is not None:
            return {**chat.native_body, "model": chat.body["model"]}
        if chat.untranslatable:
            raise untranslatable(list(chat.untranslatable), self.name)
        return to_messages_request(chat.body, self.name)

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = _message(body)
        model = data.get("model")
        usage = data.get("usage")
        return (usage_from(usage) if isinstance(usage, dict) else NO_USAGE,
                model if isinstance(model, str) else None)

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        return completion_from_message(_message(body), chat.model)

    def stream_translator(self, chat: ChatRequest) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(self.name, chat.model)

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        return None  # usage is spread over two events: the translator keeps it

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        error: Any = None
        try:
            error = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if isinstance(error, dict):
            message = str(error.get("message") or f"upstream answered {status}")
            kind = str(error.get("type") or "api_error")
            kind = ERROR_TYPES.get(kind, kind)
        else:
            message, kind, error = body_message(body, status), "api_error", None
        return upstream_error(self.name, status, message, kind, error, headers)


# -- requests: OpenAI chat body -> Messages request ------------------------------------------

def to_messages_request(body: dict[str, Any], provider: str) -> dict[str, Any]:
    """An OpenAI chat completions body as an Anthropic Messages request (400 if it cannot be)."""
    features = [name for name, value in body.items() if name not in _TRANSLATED | _TRANSPORT
                and value is not None and (name not in _NEUTRAL or value != _NEUTRAL[name])]
    format_ = body.get("response_format")
    if isinstance(format_, dict) and format_.get("type") not in (None, "text", "json_schema"):
        features.append(f"response_format {format_.get('type')}")
    if features:
        raise untranslatable(features, provider)
    system, messages = _translate_messages(body.get("messages") or [], provider)
    out: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system is not None:
        out["system"] = system
    out["messages"] = messages
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > MAX_TEMPERATURE:
            raise untranslatable(["temperature"], provider,
                                 f"{temperature} is above {MAX_TEMPERATURE:g}, its highest")
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if body.get("tools"):
        out["tools"] = [_tool(tool, i, provider) for i, tool in enumerate(body["tools"])]
    choice = _tool_choice(body.get("tool_choice"), provider)
    if body.get("parallel_tool_calls") is False and body.get("tools"):
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if isinstance(format_, dict) and format_.get("type") == "json_schema":
        schema = (format_.get("json_schema") or {}).get("schema")
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema or {}}}
    return out


def _translate_messages(messages: list[Any], provider: str,
                        ) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    system_strings: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise untranslatable([f"{where} with role {role}"], provider)
        for name in ("name", "audio", "function_call"):
            if message.get(name) is not None:
                raise untranslatable([f"{where}.{name}"], provider)
        if role in ("system", "developer"):
            if isinstance(content, str):
                system_strings.append(content)
            system.extend(_parts(content, where, provider, ("text",)))
        elif role == "user":
            _append(turns, "user", _user_content(content, where, provider))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_content(message, where, provider))
        else:  # a tool result
            result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                      "content": content if isinstance(content, str)
                      else _parts(content, where, provider, ("text",))}
            _append(turns, "user", [result])
    if len(system_strings) == 1 and len(system) == 1:
        return system_strings[0], turns  # one plain system prompt stays a plain string
    return system or None, turns


def _append(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    """Anthropic wants user and assistant turns to alternate: same-role turns are merged."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + _as_blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _user_content(content: Any, where: str, provider: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return _parts(content, where, provider, ("text", "image_url"))


def _assistant_content(message: dict[str, Any], where: str,
                       provider: str) -> str | list[dict[str, Any]]:
    content, calls = message.get("content"), message.get("tool_calls")
    if not calls:
        return content if isinstance(content, str) else _parts(content, where, provider, ("text",))
    blocks = [b for b in _parts(content, where, provider, ("text",)) if b.get("text")]
    for j, call in enumerate(calls):
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        field = f"{where}.tool_calls[{j}].function.arguments"
        try:
            arguments = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            raise BadRequest(f"{field} is not valid JSON", details={"field": field}) from None
        if not isinstance(arguments, dict):
            raise BadRequest(f"{field} must be a JSON object", details={"field": field})
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                       "input": arguments})
    return blocks


def _parts(content: Any, where: str, provider: str,
           allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        if kind not in allowed:
            raise untranslatable([f"{where}.content[{j}] of type {kind}"], provider)
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text")})
        else:
            blocks.append(image_block(part.get("image_url"), f"{where}.content[{j}]", provider))
    return blocks


def image_block(image: Any, where: str, provider: str) -> dict[str, Any]:
    """An OpenAI `image_url` (a data: URL or an http(s) URL) as an Anthropic image block."""
    if isinstance(image, str):
        image = {"url": image}
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise BadRequest(f"{where}.image_url.url must be a string",
                         details={"field": f"{where}.image_url.url"})
    if image.get("detail") not in (None, "auto"):
        raise untranslatable([f"{where}.image_url.detail"], provider,
                             "Claude chooses the image resolution itself")
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            raise BadRequest(f"{where}.image_url.url must be a base64 data: URL",
                             details={"field": f"{where}.image_url.url"})
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest(f"{where}.image_url.url must be a data: or http(s) URL",
                     details={"field": f"{where}.image_url.url"})


def image_url(source: dict[str, Any]) -> str | None:
    """An Anthropic image source as an OpenAI image URL (None: a source OpenAI cannot carry)."""
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    return None


def _tool(tool: Any, i: int, provider: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise untranslatable([f"tools[{i}] of type {kind}"], provider)
    function = tool.get("function") or {}
    out = {"name": function.get("name"),
           "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description") is not None:
        out["description"] = function["description"]
    if function.get("strict") is not None:
        out["strict"] = function["strict"]
    return out


def _tool_choice(choice: Any, provider: str) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in ("auto", "none", "required"):
        return {"type": "any" if choice == "required" else choice}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise untranslatable([f"tool_choice {kind}"], provider)


# -- answers: Messages response -> OpenAI completion -----------------------------------------

def _message(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise ValueError("not an Anthropic message object")
    return data


def usage_from(usage: dict[str, Any]) -> Usage:
    """Anthropic's usage, whose input_tokens leaves out cache reads and writes, as a `Usage`."""
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    return Usage(input_tokens=_count(usage.get("input_tokens")) + read + write,
                 cached_input_tokens=read, cache_write_tokens=write,
                 output_tokens=_count(usage.get("output_tokens")))


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens}}


def completion_from_message(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A Messages response as an OpenAI `chat.completion`; thinking blocks are not content."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"),
                "arguments": orjson.dumps(block.get("input", {})).decode()}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    completion = {
        "id": data.get("id"), "object": "chat.completion", "created": int(time.time()),
        "model": data.get("model") or model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(data.get("stop_reason") or "", "stop")}],
    }
    if isinstance(data.get("usage"), dict):
        completion["usage"] = openai_usage(usage_from(data["usage"]))
    return completion


# -- streams: Messages SSE events -> OpenAI chunks -------------------------------------------

class AnthropicStreamTranslator:
    """Anthropic's named SSE events as OpenAI chunks; usage from message_start (input side)
    and message_delta (output side, cumulative)."""

    def __init__(self, provider: str, model: str) -> None:
        self._provider = provider
        self.model: str | None = None
        self.usage: Usage = NO_USAGE
        self._fallback_model = model
        self._id = ""
        self._created = int(time.time())
        self._counts: dict[str, int] = {}
        self._output_final = False
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._finished = False
        self._usage_sent = False

    def feed(self, event: str | None, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type") or event
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = str(message.get("id") or "")
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self._count(message.get("usage"), final=False)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "message_delta":
            self._count(data.get("usage"), final=True)
            reason = (data.get("delta") or {}).get("stop_reason")
            self._finished = True
            return [self._chunk({}, FINISH_REASONS.get(reason or "", "stop"))]
        if kind == "message_stop":
            return self._usage_chunk()
        if kind == "error":
            error: dict[str, Any] = data["error"] if isinstance(data.get("error"), dict) else {}
            raise BadGateway(
                f"{self._provider} upstream stream failed: {error.get('message') or data}",
                code="upstream_stream_error",
                details={"provider": self._provider, "upstream_error": error or data})
        return []  # ping, content_block_stop, and event types of later API versions

    def close(self) -> list[dict[str, Any]]:
        return self._usage_chunk() if self._finished else []

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []  # thinking and server tool blocks are not OpenAI content
        index = self._tools[data.get("index", -1)] = len(self._tools)
        call = {"index": index, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        index = self._tools.get(data.get("index", -1))
        if (delta.get("type") == "input_json_delta" and delta.get("partial_json")
                and index is not None):
            call = {"index": index, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking, signature and citation deltas

    def _count(self, usage: Any, *, final: bool) -> None:
        if not isinstance(usage, dict):
            return
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                     "output_tokens"):
            if isinstance(usage.get(name), int):
                self._counts[name] = usage[name]
        self._output_final = self._output_final or final
        known = usage_from(self._counts)
        self.usage = Usage(
            input_tokens=known.input_tokens, cached_input_tokens=known.cached_input_tokens,
            cache_write_tokens=known.cache_write_tokens,
            output_tokens=known.output_tokens if self._output_final else 0,
            input_source="provider" if "input_tokens" in self._counts else "none",
            output_source="provider" if self._output_final else "none")

    def _usage_chunk(self) -> list[dict[str, Any]]:
        if self._usage_sent or self.usage is NO_USAGE:
            return []
        self._usage_sent = True
        chunk = self._chunk({})
        chunk["choices"] = []
        chunk["usage"] = openai_usage(self.usage)
        return [chunk]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self.model or self._fallback_model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
