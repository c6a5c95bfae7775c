"""Google Gemini (generativelanguage v1beta `generateContent`), translated from and to the
OpenAI Chat Completions shape.

Request: system and developer messages become `systemInstruction`, assistant turns role
"model", tool results `functionResponse` parts in a "user" turn; images go inline (data:
URLs) or by URL (`fileData`, which the Gemini API fetches itself). Response: usage counts are
running totals while streaming (the last report wins), and thinking is billed as output.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

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

_OFFICIAL_HOSTS = frozenset({"generativelanguage.googleapis.com"})
# Transport fields, or fields with no effect on what the model generates: `user` and
# `safety_identifier` name the end user for OpenAI's abuse monitoring, `prompt_cache_key` only
# routes OpenAI's cache (Gemini caches implicitly), `metadata` is the gateway's own tagging.
_IGNORED = frozenset({"model", "messages", "stream", "stream_options", "metadata", "user",
                      "safety_identifier", "prompt_cache_key"})
# Fields accepted only at the value that asks for nothing Gemini lacks.
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "store": (False,), "service_tier": ("auto", "default"), "parallel_tool_calls": (True,),
    "logprobs": (False,), "logit_bias": ({},), "modalities": (["text"],)}
_TRANSLATED = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
                         "n", "presence_penalty", "frequency_penalty", "seed", "response_format",
                         "tools", "tool_choice", "reasoning_effort"})
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# Google's own OpenAI compatibility layer maps reasoning_effort to these thinking budgets.
_THINKING_BUDGETS = {"none": 0, "low": 1024, "medium": 8192, "high": 24576}
_IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
                "webp": "image/webp", "gif": "image/gif", "heic": "image/heic",
                "heif": "image/heif"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)
# History has no thought signatures to replay (the OpenAI shape cannot carry them); Gemini 3
# rejects function calls without one unless given this documented placeholder.
_NO_SIGNATURE = "skip_thought_signature_validator"
_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                       "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"})
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class GeminiAdapter:
    wire = "gemini"

    def __init__(self, settings: ProviderSettings, name: str = "gemini") -> None:
        self.name = name
        self.settings = settings

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        base = credential.base_url.rstrip("/")
        require_key(self.name, credential, _OFFICIAL_HOSTS, "GEMINI_API_KEY")
        model = str(chat.body.get("model") or chat.model).removeprefix("models/")
        method = "streamGenerateContent?alt=sse" if chat.stream else "generateContent"
        url = f"{base}/v1beta/models/{quote(model, safe='')}:{method}"
        headers = {"Content-Type": "application/json"}
        if credential.api_key:
            headers["x-goog-api-key"] = credential.api_key
        if chat.native_body is not None and chat.entry_wire == self.wire:
            return UpstreamCall(url, headers, orjson.dumps(chat.native_body))
        if chat.untranslatable:
            raise untranslatable(list(chat.untranslatable), self.name)
        return UpstreamCall(url, headers, orjson.dumps(_request(chat.body, self.name)))

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = _response(body)
        model = data.get("modelVersion")
        usage = _usage(data.get("usageMetadata"), final=True)
        return usage, model if isinstance(model, str) else None

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        data = _response(body)
        ids = _call_ids()
        choices = []
        for position, candidate in enumerate(_candidates(data)):
            text, calls = _output(candidate, ids)
            message: dict[str, Any] = {"role": "assistant",
                                       "content": text if text or not calls else None}
            if calls:
                message["tool_calls"] = calls
            choices.append({"index": _index(candidate, position), "message": message,
                            "logprobs": None,
                            "finish_reason": _finish(candidate.get("finishReason"), bool(calls))})
        if not choices:  # the prompt itself was blocked: nothing was generated
            blocked = _blocked(data)
            choices.append({"index": 0, "message": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": "content_filter" if blocked else "stop"})
        model = data.get("modelVersion")
        completion: dict[str, Any] = {
            "id": _completion_id(data), "object": "chat.completion", "created": int(time.time()),
            "model": model if isinstance(model, str) else chat.model, "choices": choices}
        usage = _openai_usage(data.get("usageMetadata"))
        if usage is not None:
            completion["usage"] = usage
        return completion

    def stream_translator(self, chat: ChatRequest) -> GeminiStreamTranslator:
        n = chat.body.get("n")
        return GeminiStreamTranslator(chat.model, n if isinstance(n, int) and n > 1 else 1)

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        """Usage of one streamed response; output counts only once a candidate finished."""
        meta = event.get("usageMetadata")
        if not isinstance(meta, dict):
            return None
        final = _blocked(event) or any(c.get("finishReason") for c in _candidates(event))
        return _usage(meta, final=final)

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        error: Any = None
        try:
            data = orjson.loads(body)
            if isinstance(data, list) and data:  # a failed stream without alt=sse is an array
                data = data[0]
            error = data.get("error") if isinstance(data, dict) else None
        except orjson.JSONDecodeError:
            pass
        if isinstance(error, dict):
            message = str(error.get("message") or f"upstream answered {status}")
        else:
            message, error = body_message(body, status), None
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return upstream_error(self.name, status, message, kind, error, headers)


class GeminiStreamTranslator:
    """`streamGenerateContent?alt=sse` events (each a whole GenerateContentResponse) as
    OpenAI chunks. The stream has no terminator: `close()` sends what is owed at its end."""

    def __init__(self, model: str, candidates: int = 1) -> None:
        self.usage: Usage = NO_USAGE
        self.model: str | None = None
        self._requested_model = model
        self._expected = candidates
        self._id: str | None = None
        self._created = int(time.time())
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._calls: dict[int, int] = {}  # candidate index -> tool calls streamed so far
        self._call_ids = _call_ids()
        self._meta: dict[str, Any] | None = None
        self._blocked = False
        self._closed = False

    def feed(self, event: str | None, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("modelVersion"), str):
            self.model = data["modelVersion"]
        if self._id is None:
            self._id = _completion_id(data)
        chunks: list[dict[str, Any]] = []
        candidates = _candidates(data)
        for position, candidate in enumerate(candidates):
            index = _index(candidate, position)
            chunks.extend(self._start(index))
            chunks.extend(self._deltas(index, candidate))
            finish = candidate.get("finishReason")
            if finish and index not in self._finished:
                self._finished.add(index)
                reason = _finish(finish, self._calls.get(index, 0) > 0)
                chunks.append(self._chunk(index, {}, reason))
        if not candidates and _blocked(data) and not self._blocked:
            self._blocked = True
            chunks.extend(self._start(0))
            self._finished.add(0)
            chunks.append(self._chunk(0, {}, "content_filter"))
        meta = data.get("usageMetadata")
        if isinstance(meta, dict):  # running totals: the latest report replaces the last
            self._meta = meta
            self.usage = _usage(meta, final=self._complete())
        return chunks

    def close(self) -> list[dict[str, Any]]:
        """Finish reasons still owed ("stop": the stream ended cleanly), then the usage chunk
        once the usage is complete."""
        if self._closed:
            return []
        self._closed = True
        owed = sorted(self._started - self._finished)
        chunks = [self._chunk(index, {}, "stop") for index in owed]
        usage = _openai_usage(self._meta) if self._complete() else None
        if usage is not None:
            chunks.append({**self._envelope(), "choices": [], "usage": usage})
        return chunks

    def _complete(self) -> bool:
        return self._blocked or len(self._finished) >= self._expected

    def _start(self, index: int) -> list[dict[str, Any]]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def _deltas(self, index: int, candidate: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for part in _parts(candidate):
            call = part.get("functionCall")
            if isinstance(call, dict):
                k = self._calls.get(index, 0)
                self._calls[index] = k + 1
                yield self._chunk(index, {"tool_calls": [
                    {"index": k, **_tool_call(call, self._call_ids)}]})
            elif _is_text(part) and part["text"]:
                yield self._chunk(index, {"content": part["text"]})

    def _envelope(self) -> dict[str, Any]:
        return {"id": self._id or f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion.chunk", "created": self._created,
                "model": self.model or self._requested_model}

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None
               ) -> dict[str, Any]:
        return {**self._envelope(),
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


# -- request -----------------------------------------------------------------------------------

def _request(body: dict[str, Any], provider: str) -> dict[str, Any]:
    """An OpenAI chat completions body as a generateContent body."""
    for key, value in body.items():
        if value is None or key in _IGNORED or key in _TRANSLATED:
            continue
        if key not in _DEFAULT_ONLY or value not in _DEFAULT_ONLY[key]:
            raise untranslatable(key, provider)
    system, contents = _contents(body.get("messages") or [], provider)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    if body.get("tools"):
        request["tools"] = _tools(body["tools"], provider)
    if body.get("tool_choice") is not None:
        request["toolConfig"] = {"functionCallingConfig": _tool_choice(body["tool_choice"],
                                                                       provider)}
    config = _generation_config(body, provider)
    if config:
        request["generationConfig"] = config
    return request


def _contents(messages: list[Any], provider: str) -> tuple[list[dict[str, Any]],
                                                            list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message_role(message, where, provider)
        content = message.get("content")
        if role in ("system", "developer"):
            # Gemini has one system instruction: every system message joins it, in order.
            system.extend({"text": text} for text in _texts(content, where, provider))
        elif role == "user":
            _append(contents, "user", _user_parts(content, where, provider))
        elif role == "assistant":
            parts: list[dict[str, Any]] = [{"text": t} for t in _texts(content, where, provider)]
            if isinstance(message.get("refusal"), str) and message["refusal"]:
                parts.append({"text": message["refusal"]})
            for j, call in enumerate(message.get("tool_calls") or ()):
                name, args = _call(call, f"{where}.tool_calls[{j}]", provider)
                call_names[str(call.get("id"))] = name
                parts.append({"functionCall": {"name": name, "args": args},
                              "thoughtSignature": _NO_SIGNATURE})
            _append(contents, "model", parts)
        else:
            name = call_names.get(str(message.get("tool_call_id"))) or message.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{where}.tool_call_id matches no earlier assistant tool call",
                                 details={"field": f"{where}.tool_call_id"})
            output = "".join(_texts(content, where, provider))
            response = {"name": name, "response": {"content": _json_object_or_text(output)}}
            _append(contents, "user", [{"functionResponse": response}])
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Add a turn, merged into the previous one when it has the same role."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _texts(content: Any, where: str, provider: str) -> list[str]:
    """Text of a content that may only hold text (system, assistant, tool messages)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    texts = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        else:
            raise untranslatable(f"{where}.content[{j}].type={kind}", provider)
    return texts


def _user_parts(content: Any, where: str, provider: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            # `detail` is a resolution hint; Gemini picks its own resolution for each image.
            parts.append(_image(str(part["image_url"].get("url", "")), at, provider))
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            audio = part["input_audio"]
            mime = _AUDIO_TYPES.get(str(audio.get("format")))
            if mime is None:
                raise untranslatable(f"{at}.input_audio.format={audio.get('format')}", provider)
            parts.append({"inlineData": {"mimeType": mime, "data": str(audio.get("data", ""))}})
        elif kind == "file" and isinstance(part.get("file"), dict) and \
                isinstance(part["file"].get("file_data"), str):
            parts.append(_inline(part["file"]["file_data"], f"{at}.file.file_data"))
        else:
            raise untranslatable(f"{at}.type={kind}", provider)
    return parts


def _image(url: str, where: str, provider: str) -> dict[str, Any]:
    if url.startswith("data:"):
        return _inline(url, f"{where}.image_url.url")
    if urlsplit(url).scheme not in ("http", "https"):
        raise BadRequest(f"{where}.image_url.url must be a data: URL or an http(s) URL",
                         details={"field": f"{where}.image_url.url"})
    # The Gemini API fetches public (or signed) URLs itself; the MIME type is optional there.
    extension = urlsplit(url).path.rpartition(".")[2].lower()
    file_data = {"fileUri": url}
    if extension in _IMAGE_TYPES:
        file_data = {"mimeType": _IMAGE_TYPES[extension], **file_data}
    return {"fileData": file_data}


def _inline(url: str, field: str) -> dict[str, Any]:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise BadRequest(f"{field} must be a base64 data: URL (data:<type>;base64,...)",
                         details={"field": field})
    return {"inlineData": {"mimeType": match.group(1), "data": match.group(2)}}


def _call(call: Any, where: str, provider: str) -> tuple[str, dict[str, Any]]:
    """An assistant tool call's function name and parsed arguments."""
    call = call if isinstance(call, dict) else {}
    function = call.get("function")
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise untranslatable(f"{where}.type={call.get('type')}", provider)
    arguments = function.get("arguments") or "{}"
    try:
        args = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object",
                         details={"field": f"{where}.function.arguments"})
    return str(function.get("name", "")), args


def _json_object_or_text(text: str) -> Any:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def _tools(tools: Any, provider: str) -> list[dict[str, Any]]:
    declarations = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise untranslatable(f"tools[{i}].type={tool.get('type')}", provider)
        declaration: dict[str, Any] = {"name": function.get("name")}
        if function.get("description"):
            declaration["description"] = function["description"]
        if function.get("parameters") is not None:
            # The JSON Schema as it is; `parameters` would take only Google's OpenAPI subset.
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}]


def _tool_choice(choice: Any, provider: str) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [function.get("name")]}
    raise untranslatable(f"tool_choice={orjson.dumps(choice).decode()[:100]}", provider)


def _generation_config(body: dict[str, Any], provider: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for source, target in (("temperature", "temperature"), ("top_p", "topP"),
                           ("n", "candidateCount"), ("presence_penalty", "presencePenalty"),
                           ("frequency_penalty", "frequencyPenalty"), ("seed", "seed")):
        if body.get(source) is not None:
            config[target] = body[source]
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop is not None:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    form = body.get("response_format")
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        spec = form.get("json_schema") if isinstance(form, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequest("response_format.json_schema.schema is required",
                             details={"field": "response_format.json_schema.schema"})
        # Gemini always holds the reply to the schema, as OpenAI's `strict` asks.
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = spec["schema"]
    elif form is not None and kind != "text":
        raise untranslatable(f"response_format.type={kind}", provider)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in _THINKING_BUDGETS:
            raise untranslatable(f"reasoning_effort={effort}", provider)
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGETS[effort]}
    return config


# -- response ----------------------------------------------------------------------------------

def _response(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not any(
            key in data for key in ("candidates", "promptFeedback", "usageMetadata")):
        raise ValueError("not a Gemini GenerateContentResponse")
    return data


def _candidates(data: dict[str, Any]) -> list[dict[str, Any]]:
    candidates = data.get("candidates")
    return [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []


def _index(candidate: dict[str, Any], position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


def _parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _is_text(part: dict[str, Any]) -> bool:
    """A part of the reply's text (thought summaries are not)."""
    return isinstance(part.get("text"), str) and not part.get("thought")


def _blocked(data: dict[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _call_ids() -> Iterator[str]:
    return (f"call_{n}" for n in itertools.count())


def _tool_call(call: dict[str, Any], ids: Iterator[str]) -> dict[str, Any]:
    call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else next(ids)
    arguments = orjson.dumps(call.get("args") or {}).decode()
    return {"id": call_id, "type": "function",
            "function": {"name": call.get("name"), "arguments": arguments}}


def _output(candidate: dict[str, Any], ids: Iterator[str]) -> tuple[str, list[dict[str, Any]]]:
    """A candidate's reply text and its function calls as OpenAI tool calls."""
    texts, calls = [], []
    for part in _parts(candidate):
        if isinstance(part.get("functionCall"), dict):
            calls.append(_tool_call(part["functionCall"], ids))
        elif _is_text(part):
            texts.append(part["text"])
    return "".join(texts), calls


def _finish(reason: Any, has_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def _completion_id(data: dict[str, Any]) -> str:
    response_id = data.get("responseId")
    return f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id \
        else f"chatcmpl-{uuid.uuid4().hex}"


def _usage(meta: Any, *, final: bool) -> Usage:
    """Gemini's usageMetadata: promptTokenCount includes the cached tokens; thinking and the
    tool-use prompt are billed like output and input. `final`: the output count is complete."""
    if not isinstance(meta, dict):
        return NO_USAGE
    prompt = _count(meta.get("promptTokenCount")) + _count(meta.get("toolUsePromptTokenCount"))
    output = _count(meta.get("candidatesTokenCount")) + _count(meta.get("thoughtsTokenCount"))
    return Usage(input_tokens=prompt,
                 cached_input_tokens=min(_count(meta.get("cachedContentTokenCount")), prompt),
                 output_tokens=output, output_source="provider" if final else "none")


def _openai_usage(meta: Any) -> dict[str, Any] | None:
    if not isinstance(meta, dict):
        return None
    usage = _usage(meta, final=True)
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
            "completion_tokens_details": {
                "reasoning_tokens": _count(meta.get("thoughtsTokenCount"))}}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

