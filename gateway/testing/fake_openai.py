"""OpenAI Chat Completions (``POST /v1/chat/completions``, which Mistral shares) and Azure
OpenAI (``POST /openai/deployments/{deployment}/chat/completions?api-version=...``).

Token rule: prompt_tokens is what OpenAI bills for an o200k model (3 per message plus its
encoded role, name (+1) and text parts, plus 3 priming the reply; ``count_prompt_tokens``);
completion_tokens is the reply's word count; cached_tokens is the scripted count, clamped to
prompt_tokens (a subset of it, as OpenAI reports it).

Tools: when the request offers function tools and tool_choice names one, is "required", or
the last user text says "use tool", the answer is one tool call (``chosen_tool``) with sample
arguments for its schema; completion_tokens are then the arguments' o200k tokens, streamed one
token per delta. Mistral models (``_is_mistral``) get usage on a stream's last chunk without
asking, as Mistral's API sends it.

Azure answers the same body, plus its content-filter annotations (``prompt_filter_results``,
``content_filter_results``, and a first stream chunk with empty choices and model, as Azure
sends). Its model is the body's ``model``, else the deployment name. Without ``api-version``
Azure answers 404 "Resource not found"; without ``api-key`` or ``Authorization``, 401.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.testing.fake_behaviour import (
    STATE,
    Turn,
    body_response,
    json_response,
    open_turn,
    send_stream,
    wants_stream,
)
from gateway.testing.fake_reply import (
    Reply,
    asks_for_tool,
    json_token_pieces,
    o200k,
    plan_reply,
    tool_arguments,
)

MISTRAL_PREFIXES = ("mistral", "ministral", "magistral", "codestral", "devstral", "pixtral",
                    "open-mistral", "open-mixtral")


def _is_mistral(model: str) -> bool:
    """Mistral's API shares this route; it puts usage on a stream's last chunk unasked."""
    return model.startswith(MISTRAL_PREFIXES)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    pieces: list[str]  # the arguments' compact JSON, one o200k token per streamed delta

    def complete(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": "".join(self.pieces)}}


def chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function the fake calls: the one tool_choice names, the first tool when tool_choice
    is "required", or the first when the last user text says "use tool"."""
    functions = [t.get("function") for t in body.get("tools") or () if isinstance(t, dict)]
    tools: list[dict[str, Any]] = [f for f in functions if isinstance(f, dict)]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t.get("name") == name), tools[0])
    users = [m for m in body.get("messages") or () if isinstance(m, dict)
             and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return tools[0] if choice == "required" or asks_for_tool(str(content)) else None

FINGERPRINT = {"service_tier": "default", "system_fingerprint": "fp_fake"}
_DETAILS = "reasoning_tokens audio_tokens accepted_prediction_tokens rejected_prediction_tokens"
COMPLETION_DETAILS = dict.fromkeys(_DETAILS.split(), 0)
_SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = dict.fromkeys(("hate", "self_harm", "sexual", "violence"), _SAFE)
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]
DONE = b"data: [DONE]\n\n"


def count_prompt_tokens(messages: list[Any]) -> int:
    """Prompt tokens as OpenAI bills them for o200k models: 3 per message, its role, name
    and text encoded (text parts only), 1 more for a name, 3 to prime the reply."""
    encode = o200k().encode_ordinary
    total = 3
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += 3
        for key in ("role", "name"):
            if isinstance(message.get(key), str):
                total += len(encode(message[key])) + (key == "name")
        content = message.get("content")
        if isinstance(content, str):
            total += len(encode(content))
        elif isinstance(content, list):
            total += sum(
                len(encode(part["text"]))
                for part in content
                if isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            )
    return total


def usage_object(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> dict[str, Any]:
    """An OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": dict(COMPLETION_DETAILS),
    }


def openai_error(status: int, message: str) -> web.Response:
    """An error in OpenAI's shape; the type and code follow the status."""
    if status == 429:
        type_, code = "rate_limit_error", "rate_limit_exceeded"
    elif status >= 500:
        type_, code = "server_error", None
    else:
        type_, code = "invalid_request_error", None
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json_response(body, status)


def azure_error(status: int, message: str) -> web.Response:
    """An error in Azure's own shape (its gateway errors: 401, 404, 429, 5xx)."""
    return json_response({"error": {"code": str(status), "message": message}}, status)


def request_problem(body: Any, *, model_required: bool = True) -> str | None:
    """Why a chat request is invalid, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    model = body.get("model")
    if model_required and (not isinstance(model, str) or not model):
        return "You must provide a model parameter."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array."
    if not all(isinstance(m, dict) for m in messages):
        return "Each entry of 'messages' must be an object."
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        # bool is an int subclass; OpenAI rejects it, and so do we.
        if value is not None and (type(value) is not int or value < 1):
            return f"'{key}' must be a positive integer."
    return None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` (OpenAI and Mistral)."""
    turn = await open_turn(request, openai_error)
    if not isinstance(turn, Turn):
        return turn
    problem = request_problem(turn.body)
    if problem is not None:
        return openai_error(400, problem)
    return await _answer(request, turn, turn.body["model"], azure=False)


async def open_azure_turn(request: web.Request) -> Turn | web.StreamResponse:
    """A call to an Azure deployment: its turn, or Azure's answer to a call without an
    `api-version` (404) or without a key (401)."""
    turn = await open_turn(request, azure_error)
    if not isinstance(turn, Turn):
        return turn
    if not request.query.get("api-version"):
        return azure_error(404, "Resource not found")
    if "api-key" not in request.headers and "Authorization" not in request.headers:
        return azure_error(401, "Access denied due to missing subscription key.")
    return turn


async def azure_chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /openai/deployments/{deployment}/chat/completions?api-version=...``."""
    turn = await open_azure_turn(request)
    if not isinstance(turn, Turn):
        return turn
    problem = request_problem(turn.body, model_required=False)
    if problem is not None:
        return openai_error(400, problem)  # Azure passes OpenAI's validation errors through
    model = turn.body.get("model") or request.match_info["deployment"]
    return await _answer(request, turn, model, azure=True)


async def _answer(
    request: web.Request, turn: Turn, model: str, *, azure: bool
) -> web.StreamResponse:
    state = request.app[STATE]
    body, behaviour = turn.body, turn.behaviour
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    reply = plan_reply(behaviour, state.reply_tokens, limit)
    tool = chosen_tool(body)
    call = None
    if tool is not None:
        arguments = tool_arguments(tool.get("parameters"))
        call = ToolCall(f"call_fake_{state.next_id()[-8:]}", str(tool.get("name")),
                        json_token_pieces(arguments))
    usage = None
    if not behaviour.get("no_usage"):
        prompt_tokens = count_prompt_tokens(body["messages"])
        cached = min(behaviour.get("cached_tokens", 0), prompt_tokens)
        output = len(call.pieces) if call is not None else len(reply.words)
        usage = usage_object(prompt_tokens, output, cached)
    head = {
        "id": state.next_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
    }

    if wants_stream(body, behaviour):
        options = body.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        if not asked and not _is_mistral(model):
            usage = None
        return await _stream(request, head, reply, usage, behaviour, azure, call)

    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None,
                               "annotations": ()}
    finish = reply.finish
    if call is not None:
        message["content"] = None
        message["tool_calls"] = [call.complete()]
        finish = "tool_calls"
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish,
    }
    completion = {**head, "choices": [choice], **FINGERPRINT}
    if azure:
        choice["content_filter_results"] = FILTER_RESULTS
        completion["prompt_filter_results"] = PROMPT_FILTER_RESULTS
    if usage is not None:
        completion["usage"] = usage
    return body_response(completion, behaviour)


async def _stream(
    request: web.Request,
    head: dict[str, Any],
    reply: Reply,
    usage: dict[str, Any] | None,
    behaviour: dict[str, Any],
    azure: bool,
    call: ToolCall | None = None,
) -> web.StreamResponse:
    """Send the reply as SSE chunks; ``usage`` is None unless a usage chunk is due."""
    base = {**head, "object": "chat.completion.chunk", **FINGERPRINT}
    if usage is not None and not _is_mistral(str(head["model"])):
        # OpenAI adds "usage": null to every chunk once include_usage is requested.
        base["usage"] = None

    def data(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data({**base, "choices": [choice]})

    opening = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if azure:
        # Azure's first chunk only carries the prompt's filter results.
        empty = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        opening.insert(0, data({**empty, "prompt_filter_results": PROMPT_FILTER_RESULTS}))
    if call is not None:
        opening[-1] = chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": ""}}]})
        content = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                   for piece in call.pieces]
    else:
        content = [chunk({"content": piece}) for piece in reply.pieces()]
    closing = [chunk({}, "tool_calls" if call is not None else reply.finish)]
    if usage is not None:
        if base.get("usage", 0) is None:
            closing.append(data({**base, "choices": [], "usage": usage}))
        else:  # Mistral: the usage rides on the last chunk, unasked
            closing[-1] = data({**orjson.loads(closing[-1][6:]), "usage": usage})
    closing.append(DONE)
    return await send_stream(
        request,
        behaviour,
        opening=opening,
        content=content,
        closing=closing,
        garbage=b"data: {not json\n\n",
    )
