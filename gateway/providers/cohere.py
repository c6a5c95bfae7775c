"""Cohere Chat v2 (`POST /v2/chat`), translated from and to the OpenAI Chat Completions shape.

Cohere's messages, tools and tool calls are close to OpenAI's; the differences are the
parameter names, `tool_choice` (only REQUIRED and NONE), the finish reasons, usage (billed on
`usage.billed_units`: `usage.tokens` adds a prompt template Cohere does not charge for) and
the stream, whose events are named (`content-delta`, `tool-call-start`, `message-end`, ...).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadRequest, UpstreamStatusError
from gateway.providers.base import (
    Credential,
    UpstreamCall,
    body_message,
    message_role,
    require_key,
    untranslatable,
    upstream_error,
)
from gateway.settings import ProviderSettings

_OFFICIAL_HOSTS = frozenset({"api.cohere.com", "api.cohere.ai"})
# Transport fields, or fields with no effect on what the model generates: `user` and
# `safety_identifier` name the end user for OpenAI's abuse monitoring, `prompt_cache_key` only
# routes OpenAI's cache, `metadata` is the gateway's own tagging. Cohere always reports usage.
_IGNORED = frozenset({"model", "messages", "stream", "stream_options", "metadata", "user",
                      "safety_identifier", "prompt_cache_key"})
# Fields accepted only at the value that asks for nothing Cohere lacks.
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "store": (False,), "service_tier": ("auto", "default"), "parallel_tool_calls": (True,),
    "logprobs": (False,), "logit_bias": ({},), "modalities": (["text"],), "n": (1,)}
_RENAMED = {"temperature": "temperature", "top_p": "p", "seed": "seed",
            "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
_TRANSLATED = frozenset({*_RENAMED, "max_tokens", "max_completion_tokens", "stop",
                         "response_format", "tools", "tool_choice"})
# Cohere's p must lie within [0.01, 0.99]; OpenAI's top_p 1 (no cut) is nearest to 0.99.
_P_RANGE = (0.01, 0.99)
# ERROR and TIMEOUT end a reply before the model finished it: OpenAI's only word for an
# unfinished reply is "length".
_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length",
           "TOOL_CALL": "tool_calls", "ERROR": "length", "TIMEOUT": "length"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 422: "invalid_request_error",
                429: "rate_limit_error"}


class CohereAdapter:
    wire = "cohere"

    def __init__(self, settings: ProviderSettings, name: str = "cohere") -> None:
        self.name = name
        self.settings = settings

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        base = credential.base_url.rstrip("/")
        require_key(self.name, credential, _OFFICIAL_HOSTS, "COHERE_API_KEY")
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if chat.stream else "application/json"}
        if credential.api_key:
            headers["Authorization"] = f"Bearer {credential.api_key}"
        model = chat.body.get("model") or chat.model
        if chat.native_body is not None and chat.entry_wire == self.wire:
            body = {**chat.native_body, "model": model}
        elif chat.untranslatable:
            raise untranslatable(list(chat.untranslatable), self.name)
        else:
            body = {**_request(chat.body, self.name), "model": model, "stream": chat.stream}
        return UpstreamCall(f"{base}/v2/chat", headers, orjson.dumps(body))

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        # Cohere's answers do not name the model that served them.
        return _usage(_response(body).get("usage")), None

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        data = _response(body)
        message = _obj(data.get("message"))
        text = "".join(_reply_texts(message.get("content")))
        calls = [_tool_call(call) for call in message.get("tool_calls") or ()
                 if isinstance(call, dict)]
        reply: dict[str, Any] = {"role": "assistant", "content": text if text or not calls
                                 else None}
        if calls:
            reply["tool_calls"] = calls
        completion: dict[str, Any] = {
            "id": _completion_id(data.get("id")), "object": "chat.completion",
            "created": int(time.time()), "model": chat.model,
            "choices": [{"index": 0, "message": reply, "logprobs": None,
                         "finish_reason": _finish(data.get("finish_reason"), bool(calls))}]}
        usage = _openai_usage(data.get("usage"))
        if usage is not None:
            completion["usage"] = usage
        return completion

    def stream_translator(self, chat: ChatRequest) -> CohereStreamTranslator:
        return CohereStreamTranslator(chat.model)

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        """Usage of a `message-end` event (or of a whole response)."""
        delta = event.get("delta")
        usage = delta.get("usage") if isinstance(delta, dict) else event.get("usage")
        return _usage(usage) if isinstance(usage, dict) else None

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        error: Any = None
        try:
            error = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"] or f"upstream answered {status}"
        else:
            message, error = body_message(body, status), None
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return upstream_error(self.name, status, message, kind, error, headers)


class CohereStreamTranslator:
    """Cohere's named stream events as OpenAI chunks; `message-end` carries the finish reason
    and the usage, so nothing is owed at `close()`."""

    def __init__(self, model: str) -> None:
        self.usage: Usage = NO_USAGE
        self.model: str | None = None  # Cohere's stream does not name the model
        self._requested_model = model
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._started = False
        self._calls: dict[Any, int] = {}  # Cohere's tool call index -> OpenAI's
        self._has_calls = False

    def feed(self, event: str | None, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, dict):  # `[DONE]` or anything else that is not an event
            return []
        kind = data.get("type") or event
        delta = _obj(data.get("delta"))
        message = _obj(delta.get("message"))
        chunks: list[dict[str, Any]] = []
        if kind == "message-start":
            self._id = _completion_id(data.get("id"))
        if not self._started and kind in ("message-start", "content-start", "content-delta",
                                          "tool-call-start", "message-end"):
            self._started = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        content = message.get("content")
        if kind in ("content-start", "content-delta") and isinstance(content, dict):
            text = content.get("text")  # thinking deltas carry `thinking`, not text
            if isinstance(text, str) and text:
                chunks.append(self._chunk({"content": text}))
        calls = message.get("tool_calls")
        if kind == "tool-call-start" and isinstance(calls, dict):
            self._has_calls = True
            index = self._calls.setdefault(data.get("index"), len(self._calls))
            chunks.append(self._chunk({"tool_calls": [{"index": index, **_tool_call(calls)}]}))
        elif kind == "tool-call-delta" and isinstance(calls, dict):
            function = _obj(calls.get("function"))
            arguments = function.get("arguments")
            index = self._calls.get(data.get("index"), max(self._calls.values(), default=0))
            if isinstance(arguments, str) and arguments:
                chunks.append(self._chunk({"tool_calls": [
                    {"index": index, "function": {"arguments": arguments}}]}))
        elif kind == "message-end":
            chunks.append(self._chunk({}, _finish(delta.get("finish_reason"), self._has_calls)))
            usage = _openai_usage(delta.get("usage"))
            if usage is not None:
                self.usage = _usage(delta["usage"])
                chunks.append({**self._envelope(), "choices": [], "usage": usage})
        # tool-plan-delta is the model's reasoning before its calls, not reply content;
        # content-end, tool-call-end and citations carry nothing for the OpenAI shape.
        return chunks

    def close(self) -> list[dict[str, Any]]:
        return []

    def _envelope(self) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._requested_model}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self._envelope(),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# -- request -----------------------------------------------------------------------------------

def _request(body: dict[str, Any], provider: str) -> dict[str, Any]:
    """An OpenAI chat completions body as a Cohere v2 chat body (without model and stream)."""
    for key, value in body.items():
        if value is None or key in _IGNORED or key in _TRANSLATED:
            continue
        if key not in _DEFAULT_ONLY or value not in _DEFAULT_ONLY[key]:
            raise untranslatable(key, provider)
    request: dict[str, Any] = {"messages": _messages(body.get("messages") or [], provider)}
    for source, target in _RENAMED.items():
        if body.get(source) is not None:
            request[target] = body[source]
    if "p" in request and isinstance(request["p"], int | float):
        request["p"] = min(max(request["p"], _P_RANGE[0]), _P_RANGE[1])
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        request["max_tokens"] = limit
    stop = body.get("stop")
    if stop is not None:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("response_format") is not None:
        response_format = _response_format(body["response_format"], provider)
        if response_format is not None:
            request["response_format"] = response_format
    tools = body.get("tools")
    if tools:
        request["tools"] = _tools(tools, provider)
        if any(isinstance(t, dict) and isinstance(t.get("function"), dict)
               and t["function"].get("strict") is True for t in tools):
            request["strict_tools"] = True
    choice = body.get("tool_choice")
    if choice is not None and choice != "auto":
        _tool_choice(request, choice, provider)
    return request


def _messages(messages: list[Any], provider: str) -> list[dict[str, Any]]:
    translated: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message_role(message, where, provider)
        content = message.get("content")
        if role in ("system", "developer"):
            translated.append({"role": "system", "content": _text(content, where, provider)})
        elif role == "user":
            translated.append({"role": "user", "content": _user_content(content, where,
                                                                         provider)})
        elif role == "assistant":
            translated.append(_assistant(message, where, provider))
        else:
            translated.append({"role": "tool", "tool_call_id": message.get("tool_call_id"),
                               "content": _text(content, where, provider)})
    return translated


def _text(content: Any, where: str, provider: str) -> str:
    """The text of a content that may only hold text."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        else:
            raise untranslatable(f"{where}.content[{j}].type={kind}", provider)
    return "".join(texts)


def _user_content(content: Any, where: str, provider: str) -> str | list[dict[str, Any]]:
    if not isinstance(content, list):
        return content if isinstance(content, str) else ""
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            # Cohere takes OpenAI's image part as it is: a data: URL or an http(s) URL.
            image = {k: v for k, v in part["image_url"].items() if k in ("url", "detail")}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise untranslatable(f"{where}.content[{j}].type={kind}", provider)
    return parts


def _assistant(message: dict[str, Any], where: str, provider: str) -> dict[str, Any]:
    text = _text(message.get("content"), where, provider)
    if isinstance(message.get("refusal"), str):
        text += message["refusal"]
    translated: dict[str, Any] = {"role": "assistant"}
    calls = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            kind = call.get("type") if isinstance(call, dict) else None
            raise untranslatable(f"{where}.tool_calls[{j}].type={kind}", provider)
        calls.append({"id": call.get("id"), "type": "function",
                      "function": {"name": function.get("name"),
                                   "arguments": function.get("arguments") or "{}"}})
    if calls:
        translated["tool_calls"] = calls
        if text:  # the text a model writes before its tool calls is Cohere's tool plan
            translated["tool_plan"] = text
    else:
        translated["content"] = text
    return translated


def _tools(tools: Any, provider: str) -> list[dict[str, Any]]:
    translated = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise untranslatable(f"tools[{i}].type={tool.get('type')}", provider)
        spec = {k: function[k] for k in ("name", "description", "parameters") if k in function}
        translated.append({"type": "function", "function": spec})
    return translated


def _tool_choice(request: dict[str, Any], choice: Any, provider: str) -> None:
    if choice in ("none", "required"):
        request["tool_choice"] = choice.upper()
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or choice.get("type") != "function":
        raise untranslatable(f"tool_choice={orjson.dumps(choice).decode()[:100]}", provider)
    # Cohere cannot name the tool to call: offering only that one and requiring a call does.
    name = function.get("name")
    tools = [t for t in request.get("tools", ()) if t["function"].get("name") == name]
    if not tools:
        raise BadRequest(f"tool_choice names {name!r}, which is not among the tools",
                         details={"field": "tool_choice.function.name"})
    request["tools"] = tools
    request["tool_choice"] = "REQUIRED"


def _response_format(form: Any, provider: str) -> dict[str, Any] | None:
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = form.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequest("response_format.json_schema.schema is required",
                             details={"field": "response_format.json_schema.schema"})
        return {"type": "json_object", "json_schema": spec["schema"]}
    raise untranslatable(f"response_format.type={kind}", provider)


# -- response ----------------------------------------------------------------------------------

def _response(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        raise ValueError("not a Cohere chat response")
    return data


def _reply_texts(content: Any) -> list[str]:
    """The text parts of a reply (thinking parts are not its content)."""
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content if isinstance(part, dict)
            and part.get("type", "text") == "text" and isinstance(part.get("text"), str)] \
        if isinstance(content, list) else []


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = _obj(call.get("function"))
    arguments = function.get("arguments")
    return {"id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": function.get("name"),
                         "arguments": arguments if isinstance(arguments, str) else ""}}


def _finish(reason: Any, has_calls: bool) -> str:
    finish = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_calls and finish == "stop" else finish


def _completion_id(response_id: Any) -> str:
    return f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id \
        else f"chatcmpl-{uuid.uuid4().hex}"


def _usage(usage: Any) -> Usage:
    """What Cohere bills: `billed_units` (`tokens` only when billed units are missing), with
    `cached_tokens` as the cached part of the input (at most all of it)."""
    if not isinstance(usage, dict):
        return NO_USAGE
    billed = _obj(usage.get("billed_units"))
    tokens = _obj(usage.get("tokens"))
    if not billed and not tokens:
        return NO_USAGE
    input_tokens = _count(billed.get("input_tokens", tokens.get("input_tokens")))
    output_tokens = _count(billed.get("output_tokens", tokens.get("output_tokens")))
    cached = min(_count(usage.get("cached_tokens")), input_tokens)
    return Usage(input_tokens=input_tokens, cached_input_tokens=cached,
                 output_tokens=output_tokens)


def _openai_usage(usage: Any) -> dict[str, Any] | None:
    counted = _usage(usage)
    if counted is NO_USAGE:
        return None
    return {"prompt_tokens": counted.input_tokens, "completion_tokens": counted.output_tokens,
            "total_tokens": counted.input_tokens + counted.output_tokens,
            "prompt_tokens_details": {"cached_tokens": counted.cached_input_tokens}}


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

