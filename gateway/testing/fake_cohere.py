"""Cohere Chat v2: ``POST /v2/chat`` (JSON, or SSE with ``"stream": true``).

Token rule (``count_billed_input_tokens``): billed_units.input_tokens is the plain o200k
count of every message's text (string content, text parts, tool results, assistant tool
call arguments and tool plans), each piece encoded separately. tokens.input_tokens adds
the prompt template Cohere wraps around them, which is not billed: ``template_tokens``
(150 + 5 per message). Output tokens (billed and processed alike) are the reply's word
count, or for a tool call its arguments' o200k tokens. A scripted cached_tokens C is
reported as usage.cached_tokens (clamped to tokens.input_tokens) only when above 0.

The stream is SSE, each event named (``event: content-delta``) with its ``type`` repeated
in the JSON, ending with ``data: [DONE]``. Requests need ``Authorization: Bearer ...``,
else 401. Errors are ``{"message": ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.testing.fake_behaviour import (
    STATE,
    Turn,
    body_response,
    json_response,
    open_turn,
    send_stream,
    sse_event,
    wants_stream,
)
from gateway.testing.fake_reply import (
    LENGTH,
    STOP_SEQUENCE,
    asks_for_tool,
    compact_json,
    count_text_tokens,
    json_token_pieces,
    plan_reply,
    tool_arguments,
)

ROLES = ("system", "user", "assistant", "tool")
FINISH_REASONS = {LENGTH: "MAX_TOKENS", STOP_SEQUENCE: "STOP_SEQUENCE"}
TEMPLATE_BASE = 150
TEMPLATE_PER_MESSAGE = 5


def cohere_error(status: int, message: str) -> web.Response:
    """An error in Cohere's shape."""
    return json_response({"message": message}, status)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "document":
            document = part.get("document")
            data = document.get("data") if isinstance(document, dict) else None
            texts.append(data if isinstance(data, str) else compact_json(data))
    return texts


def count_billed_input_tokens(messages: list[Any]) -> int:
    """billed_units.input_tokens for a chat's messages (see the module docstring)."""
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        texts.extend(_texts(message.get("content")))
        if isinstance(message.get("tool_plan"), str):
            texts.append(message["tool_plan"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                texts.append(function["arguments"])
    return count_text_tokens(texts)


def template_tokens(message_count: int) -> int:
    """The unbilled prompt template tokens that tokens.input_tokens adds."""
    return TEMPLATE_BASE + TEMPLATE_PER_MESSAGE * message_count


def usage_object(messages: list[Any], output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """A Cohere ``usage`` object."""
    billed = count_billed_input_tokens(messages)
    processed = billed + template_tokens(len(messages))
    usage: dict[str, Any] = {
        "billed_units": {"input_tokens": billed, "output_tokens": output_tokens},
        "tokens": {"input_tokens": processed, "output_tokens": output_tokens},
    }
    if cached_tokens:
        usage["cached_tokens"] = min(cached_tokens, processed)
    return usage


def request_problem(body: Any) -> str | None:
    """Why a chat request is invalid (a 400), or None."""
    if not isinstance(body, dict):
        return "invalid request: the request body is not valid JSON"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "invalid request: model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "invalid request: messages must not be empty"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"invalid request: messages[{i}].role must be one of {', '.join(ROLES)}"
    limit = body.get("max_tokens")
    if limit is not None and (type(limit) is not int or limit < 1):
        return "invalid request: max_tokens must be a positive integer"
    return None


def chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function the fake calls: forced by tool_choice REQUIRED, or the first if asked."""
    functions = [
        tool["function"]
        for tool in body.get("tools") or ()
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    choice = str(body.get("tool_choice") or "AUTO").upper()
    if not functions or choice == "NONE":
        return None
    users = [m for m in body["messages"] if m.get("role") == "user"]
    last_text = " ".join(_texts(users[-1].get("content"))) if users else ""
    return functions[0] if choice == "REQUIRED" or asks_for_tool(last_text) else None


@dataclass(frozen=True, slots=True)
class Answer:
    """The assistant message, and what streams: text deltas or tool-call argument deltas."""

    message: dict[str, Any]
    pieces: list[str]
    finish_reason: str
    tool_call: dict[str, Any] | None = None


def plan_answer(
    body: dict[str, Any], behaviour: dict[str, Any], default_tokens: int, number: int
) -> Answer:
    """A tool call when the fake calls a tool, else the deterministic text reply."""
    function = chosen_tool(body)
    if function is not None:
        arguments = tool_arguments(function.get("parameters"))
        call = {
            "id": f"{function.get('name')}_fake_{number}",
            "type": "function",
            "function": {"name": function.get("name"), "arguments": compact_json(arguments)},
        }
        message = {"role": "assistant", "tool_calls": [call]}
        return Answer(message, json_token_pieces(arguments), "TOOL_CALL", call)
    stops = body.get("stop_sequences") or ()
    reply = plan_reply(behaviour, default_tokens, body.get("max_tokens"), stops)
    message = {"role": "assistant", "content": [{"type": "text", "text": reply.text}]}
    return Answer(message, reply.pieces(), FINISH_REASONS.get(reply.finish, "COMPLETE"))


async def chat(request: web.Request) -> web.StreamResponse:
    """``POST /v2/chat``."""
    turn = await open_turn(request, cohere_error)
    if not isinstance(turn, Turn):
        return turn
    body, behaviour = turn.body, turn.behaviour
    problem = request_problem(body)
    if problem is not None:
        return cohere_error(400, problem)
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return cohere_error(401, "no api key supplied")

    state = request.app[STATE]
    number = state.next_number()
    answer = plan_answer(body, behaviour, state.reply_tokens, number)
    usage = None
    if not behaviour.get("no_usage"):
        cached = behaviour.get("cached_tokens", 0)
        usage = usage_object(body["messages"], len(answer.pieces), cached)
    # Cohere's ids are UUIDs; this one is deterministic.
    id_ = f"00000000-0000-4000-8000-{number:012d}"
    if wants_stream(body, behaviour):
        return await _stream(request, behaviour, id_, answer, usage)
    response = {"id": id_, "message": answer.message, "finish_reason": answer.finish_reason}
    if usage is not None:
        response["usage"] = usage
    return body_response(response, behaviour)


async def _stream(
    request: web.Request,
    behaviour: dict[str, Any],
    id_: str,
    answer: Answer,
    usage: dict[str, Any] | None,
) -> web.StreamResponse:
    """The answer as Cohere's named SSE events."""

    def event(type_: str, **fields: Any) -> bytes:
        return sse_event(type_, {"type": type_, **fields})

    call = answer.tool_call
    kind = "content" if call is None else "tool-call"

    def delta(piece: str) -> dict[str, Any]:
        if call is None:
            return {"message": {"content": {"text": piece}}}
        return {"message": {"tool_calls": {"function": {"arguments": piece}}}}

    if call is None:
        start: dict[str, Any] = {"content": {"type": "text", "text": ""}}
    else:
        start = {"tool_calls": {**call, "function": {**call["function"], "arguments": ""}}}
    empty = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
    opening = [
        event("message-start", id=id_, delta={"message": empty}),
        event(f"{kind}-start", index=0, delta={"message": start}),
    ]
    end: dict[str, Any] = {"finish_reason": answer.finish_reason}
    if usage is not None:
        end["usage"] = usage
    return await send_stream(
        request,
        behaviour,
        opening=opening,
        content=(event(f"{kind}-delta", index=0, delta=delta(piece)) for piece in answer.pieces),
        closing=[
            event(f"{kind}-end", index=0),
            event("message-end", delta=end),
            b"data: [DONE]\n\n",
        ],
        garbage=b"event: content-delta\ndata: {not json\n\n",
    )
