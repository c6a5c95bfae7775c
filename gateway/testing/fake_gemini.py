"""Google Gemini (generativelanguage v1beta): ``POST /v1beta/models/{model}:generateContent``,
``:streamGenerateContent`` (``?alt=sse``: ``data: {...}`` events separated by CRLF blank
lines, no terminator; without ``alt=sse``: one streamed JSON array) and ``:countTokens``.

Token rule (``count_prompt_tokens``): promptTokenCount is the plain o200k count of the
systemInstruction's and every content's text parts, plus functionCall args and
functionResponse payloads as compact JSON, each piece encoded separately.
candidatesTokenCount is the reply's word count (a functionCall: its args' JSON tokens).
A scripted cached_tokens C (clamped to the prompt) is reported as cachedContentTokenCount,
a subset of promptTokenCount, and only when above 0. As protobuf JSON does, counts of 0 are
left out. While streaming, every chunk carries the prompt's usage and the last one the full
usage (Gemini's counts are running totals, never to be summed).

The request fields are read in camelCase or snake_case, as Google's JSON mapping accepts
both. A key is needed (``x-goog-api-key`` or ``?key=``), else 403 PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.testing.fake_behaviour import (
    JSON_TYPE,
    STATE,
    Turn,
    body_response,
    json_response,
    open_turn,
    record_request,
    send_stream,
)
from gateway.testing.fake_reply import (
    LENGTH,
    asks_for_tool,
    compact_json,
    count_text_tokens,
    json_token_pieces,
    plan_reply,
    tool_arguments,
)

STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity)."
    " Please use API Key or other form of API consumer identity to call this API."
)


def google_error(status: int, message: str) -> web.Response:
    """An error in Google's shape; the status name follows the HTTP status."""
    name = STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return json_response({"error": {"code": status, "message": message, "status": name}}, status)


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a camelCase name, or its snake_case spelling."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    return obj.get("".join("_" + c.lower() if c.isupper() else c for c in name))


def _part_texts(content: Any) -> list[str]:
    texts: list[str] = []
    for part in field(content, "parts") or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        for key in ("functionCall", "functionResponse"):
            value = field(part, key)
            if isinstance(value, dict):
                texts.append(compact_json(value.get("args", value.get("response", {}))))
    return texts


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """promptTokenCount for a generateContent body (see the module docstring)."""
    texts = _part_texts(field(body, "systemInstruction"))
    for content in field(body, "contents") or ():
        texts.extend(_part_texts(content))
    return count_text_tokens(texts)


def request_problem(body: Any) -> str | None:
    """Why a generateContent request is invalid (a 400), or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    contents = field(body, "contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(field(content, "parts"), list):
            return f"* GenerateContentRequest.contents[{i}].parts: must not be empty."
        if content.get("role") not in (None, "user", "model", "function"):
            return f"* GenerateContentRequest.contents[{i}].role: Please use a valid role."
    config = field(body, "generationConfig") or {}
    limit = field(config, "maxOutputTokens")
    if limit is not None and (type(limit) is not int or limit < 1):
        return "* GenerateContentRequest.generation_config.max_output_tokens: must be > 0."
    return None


def chosen_function(body: dict[str, Any]) -> dict[str, Any] | None:
    """The declared function the fake calls: forced by mode ANY, or the first when asked."""
    declarations = [
        declaration
        for tool in field(body, "tools") or ()
        for declaration in field(tool, "functionDeclarations") or ()
        if isinstance(declaration, dict)
    ]
    calling = field(field(body, "toolConfig"), "functionCallingConfig")
    mode = str(field(calling, "mode") or "AUTO").upper()
    if not declarations or mode == "NONE":
        return None
    if mode == "ANY":
        return declarations[0]
    users = [c for c in field(body, "contents") if c.get("role", "user") == "user"]
    last_text = " ".join(_part_texts(users[-1])) if users else ""
    return declarations[0] if asks_for_tool(last_text) else None


def usage_metadata(prompt: int, candidates: int, cached: int) -> dict[str, Any]:
    """A ``usageMetadata`` object; zero counts are left out as protobuf JSON does."""
    counts = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "cachedContentTokenCount": min(cached, prompt),
    }
    usage: dict[str, Any] = {key: value for key, value in counts.items() if value}
    if prompt:
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return usage


async def models_action(request: web.Request) -> web.StreamResponse:
    """``POST /v1beta/models/{model}:{method}``."""
    model, _, method = request.match_info["target"].rpartition(":")
    if method in ("generateContent", "streamGenerateContent") and model:
        return await _generate(request, model, stream=method == "streamGenerateContent")
    body = record_request(request, await request.read())
    if method == "countTokens" and model:
        inner = field(body, "generateContentRequest") or body
        problem = request_problem(inner)
        if problem is not None:
            return google_error(400, problem)
        prompt = count_prompt_tokens(inner)
        details = [{"modality": "TEXT", "tokenCount": prompt}]
        return _keyless(request) or json_response(
            {"totalTokens": prompt, "promptTokensDetails": details}
        )
    return google_error(404, f"models/{model} is not found or does not support {method}.")


def _keyless(request: web.Request) -> web.Response | None:
    if "x-goog-api-key" in request.headers or "key" in request.query:
        return None
    return google_error(403, NO_KEY)


@dataclass(frozen=True, slots=True)
class Answer:
    """The candidate's parts (whole, and as streamed), its finish reason and token count."""

    parts: list[dict[str, Any]]
    stream_parts: list[dict[str, Any]]
    finish: str
    output_tokens: int


def plan_answer(body: dict[str, Any], behaviour: dict[str, Any], default_tokens: int) -> Answer:
    """A functionCall when the fake calls a function, else the deterministic text reply."""
    function = chosen_function(body)
    if function is not None:
        args = tool_arguments(function.get("parameters")
                              or field(function, "parametersJsonSchema"))
        parts = [{"functionCall": {"name": function.get("name"), "args": args}}]
        return Answer(parts, parts, "STOP", len(json_token_pieces(args)))
    config = field(body, "generationConfig") or {}
    stops = field(config, "stopSequences") or ()
    reply = plan_reply(behaviour, default_tokens, field(config, "maxOutputTokens"), stops)
    return Answer(
        [{"text": reply.text}],
        [{"text": piece} for piece in reply.pieces()],
        "MAX_TOKENS" if reply.finish == LENGTH else "STOP",  # a stop sequence is a STOP
        len(reply.words),
    )


async def _generate(request: web.Request, model: str, *, stream: bool) -> web.StreamResponse:
    turn = await open_turn(request, google_error)
    if not isinstance(turn, Turn):
        return turn
    body, behaviour = turn.body, turn.behaviour
    problem = request_problem(body)
    if problem is not None:
        return google_error(400, problem)
    refusal = _keyless(request)
    if refusal is not None:
        return refusal

    state = request.app[STATE]
    answer = plan_answer(body, behaviour, state.reply_tokens)
    tail = {"modelVersion": model, "responseId": f"fake-{state.next_number()}"}
    usage: dict[str, Any] | None = None
    if not behaviour.get("no_usage"):
        prompt = count_prompt_tokens(body)
        usage = usage_metadata(prompt, answer.output_tokens, behaviour.get("cached_tokens", 0))
    if stream and behaviour.get("body") is None:
        return await _stream(request, behaviour, answer, usage, tail)
    response: dict[str, Any] = {"candidates": [_candidate(answer.parts, answer.finish)]}
    if usage is not None:
        response["usageMetadata"] = usage
    return body_response({**response, **tail}, behaviour)


def _candidate(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    return candidate


async def _stream(
    request: web.Request,
    behaviour: dict[str, Any],
    answer: Answer,
    usage: dict[str, Any] | None,
    tail: dict[str, Any],
) -> web.StreamResponse:
    """One chunk per part, then a last chunk with the finish reason and the full usage."""
    running = None
    if usage is not None:  # the prompt's counts alone, as Gemini sends before the end
        prompt, cached = usage.get("promptTokenCount", 0), usage.get("cachedContentTokenCount", 0)
        running = usage_metadata(prompt, 0, cached)

    def response(part: dict[str, Any], finish: str | None, meta: Any) -> dict[str, Any]:
        chunk: dict[str, Any] = {"candidates": [_candidate([part], finish)]}
        if meta is not None:
            chunk["usageMetadata"] = meta
        return {**chunk, **tail}

    parts = answer.stream_parts
    chunks: Iterator[dict[str, Any]] = (response(part, None, running) for part in parts)
    last = response({"text": ""}, answer.finish, usage)
    if request.query.get("alt") == "sse":
        return await send_stream(
            request,
            behaviour,
            opening=(),
            content=(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n" for chunk in chunks),
            closing=[b"data: " + orjson.dumps(last) + b"\r\n\r\n"],
            garbage=b"data: {not json\r\n\r\n",
        )
    # Without alt=sse Google streams one JSON array, element by element.
    return await send_stream(
        request,
        behaviour,
        opening=[b"["],
        content=((b",\r\n" if i else b"") + orjson.dumps(c) for i, c in enumerate(chunks)),
        closing=[(b",\r\n" if parts else b"") + orjson.dumps(last), b"]"],
        garbage=b"{not json,\r\n",
        headers={"Content-Type": JSON_TYPE},
    )
