"""Anthropic Messages: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Token rule (``count_input_tokens``): the prompt is ceil(1.2 x the o200k tokens of the
system text, each message's text blocks, tool_use inputs (compact JSON) and tool_result
texts), each piece encoded separately; images and tool definitions count nothing. The 1.2
stands for Claude's tokenizer being wordier than o200k, so an o200k estimate falls short.
As Anthropic reports it, ``input_tokens`` excludes cache reads: with scripted cached_tokens
C (clamped to the prompt P), cache_read_input_tokens = C and input_tokens = P - C; a
scripted cache_write_tokens W is reported as cache_creation_input_tokens and carved out too.
output_tokens is the reply's word count, or the tool input's JSON tokens for a tool call.

Requests need ``anthropic-version`` (else 400) and ``x-api-key`` or ``Authorization``
(else 401), as the real API does. count_tokens is logged but never takes a scripted
behaviour, so scripts stay aimed at the calls that generate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.testing.fake_behaviour import (
    SSE_HEADERS,
    STATE,
    Turn,
    body_response,
    json_response,
    open_turn,
    record_request,
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

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STOP_REASONS = {LENGTH: "max_tokens", STOP_SEQUENCE: "stop_sequence"}


def anthropic_error(status: int, message: str) -> web.Response:
    """An error in Anthropic's shape; the type follows the status."""
    type_ = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if status == 529:
        message = "Overloaded"
    error = {"type": type_, "message": message}
    return json_response({"type": "error", "error": error, "request_id": "req_fake"}, status)


def _block_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            texts.append(compact_json(block.get("input", {})))
        elif kind == "tool_result":
            texts.extend(_block_texts(block.get("content")))
    return texts


def count_input_tokens(body: dict[str, Any]) -> int:
    """The prompt's input tokens, cache reads included (see the module docstring)."""
    texts = _block_texts(body.get("system"))
    for message in body.get("messages", ()):
        if isinstance(message, dict):
            texts.extend(_block_texts(message.get("content")))
    return (6 * count_text_tokens(texts) + 4) // 5  # ceil(1.2 x tokens), in integers


def request_problem(request: web.Request, body: Any, *, generate: bool = True) -> str | None:
    """Why a messages request is invalid (a 400), or None."""
    if "anthropic-version" not in request.headers:
        return "anthropic-version: header is required"
    if not isinstance(body, dict):
        return "The request body is not valid JSON."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if generate and max_tokens is None:
        return "max_tokens: Field required"
    if generate and (type(max_tokens) is not int or max_tokens < 1):
        return "max_tokens: Input should be greater than or equal to 1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or a list of text blocks"
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(type(s) is str for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    return None


def _unauthenticated(request: web.Request) -> web.Response | None:
    if "x-api-key" in request.headers or "Authorization" in request.headers:
        return None
    return anthropic_error(401, "x-api-key header is required")


def chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the fake calls: forced by ``tool_choice``, or the first when asked to."""
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        choice = {"type": "auto"}
    kind = choice.get("type")
    if not tools or kind == "none":
        return None
    if kind == "tool":
        return next((t for t in tools if t.get("name") == choice.get("name")), tools[0])
    users = [m for m in body["messages"] if m.get("role") == "user"]
    last_text = " ".join(_block_texts(users[-1].get("content"))) if users else ""
    return tools[0] if kind == "any" or asks_for_tool(last_text) else None


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``."""
    body = record_request(request, await request.read())
    problem = request_problem(request, body, generate=False)
    if problem is not None:
        return anthropic_error(400, problem)
    return _unauthenticated(request) or json_response({"input_tokens": count_input_tokens(body)})


@dataclass(frozen=True, slots=True)
class Content:
    """The one content block of an answer, and how it streams."""

    block: dict[str, Any]  # as the finished message holds it
    start: dict[str, Any]  # as content_block_start announces it
    delta_type: str
    delta_key: str
    pieces: list[str]  # one content_block_delta each
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def plan_content(
    body: dict[str, Any], behaviour: dict[str, Any], default_tokens: int, number: int
) -> Content:
    """A tool_use block when the fake calls a tool, else the deterministic text reply."""
    tool = chosen_tool(body)
    if tool is not None:
        arguments = tool_arguments(tool.get("input_schema"))
        pieces = json_token_pieces(arguments)
        start = {"type": "tool_use", "id": f"toolu_fake_{number}", "name": tool.get("name")}
        return Content(
            block={**start, "input": arguments},
            start={**start, "input": {}},
            delta_type="input_json_delta",
            delta_key="partial_json",
            pieces=pieces,
            stop_reason="tool_use",
            stop_sequence=None,
            output_tokens=len(pieces),
        )
    stops = body.get("stop_sequences") or ()
    reply = plan_reply(behaviour, default_tokens, body["max_tokens"], stops)
    return Content(
        block={"type": "text", "text": reply.text},
        start={"type": "text", "text": ""},
        delta_type="text_delta",
        delta_key="text",
        pieces=reply.pieces(),
        stop_reason=STOP_REASONS.get(reply.finish, "end_turn"),
        stop_sequence=reply.stop_sequence,
        output_tokens=len(reply.words),
    )


def usage_object(prompt: int, output_tokens: int, cached_tokens: int,
                 cache_write_tokens: int = 0) -> dict[str, Any]:
    """An Anthropic ``usage`` object; cache reads and writes are carved out of the prompt."""
    cached = min(cached_tokens, prompt)
    written = min(cache_write_tokens, prompt - cached)
    return {
        "input_tokens": prompt - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    turn = await open_turn(request, anthropic_error)
    if not isinstance(turn, Turn):
        return turn
    body, behaviour = turn.body, turn.behaviour
    problem = request_problem(request, body)
    if problem is not None:
        return anthropic_error(400, problem)
    refusal = _unauthenticated(request)
    if refusal is not None:
        return refusal

    state = request.app[STATE]
    number = state.next_number()
    content = plan_content(body, behaviour, state.reply_tokens, number)
    usage = None
    if not behaviour.get("no_usage"):
        cached = behaviour.get("cached_tokens", 0)
        usage = usage_object(count_input_tokens(body), content.output_tokens, cached,
                             behaviour.get("cache_write_tokens", 0))
    message: dict[str, Any] = {
        "id": f"msg_fake_{number}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [content.block],
        "stop_reason": content.stop_reason,
        "stop_sequence": content.stop_sequence,
    }
    headers = {"request-id": f"req_fake_{number}"}
    if wants_stream(body, behaviour):
        return await _stream(request, behaviour, message, content, usage, headers)
    if usage is not None:
        message["usage"] = usage
    return body_response(message, behaviour, headers)


async def _stream(
    request: web.Request,
    behaviour: dict[str, Any],
    message: dict[str, Any],
    content: Content,
    usage: dict[str, Any] | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    """The message as Anthropic's named SSE events."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    final: dict[str, Any] = {}
    if usage is not None:
        start["usage"] = {**usage, "output_tokens": 1}  # as Anthropic: 1 before generating
        final["usage"] = {k: v for k, v in usage.items() if k != "service_tier"}
    delta = {"stop_reason": content.stop_reason, "stop_sequence": content.stop_sequence}

    def block_delta(piece: str) -> bytes:
        event = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": content.delta_type, content.delta_key: piece},
        }
        return sse_event("content_block_delta", event)

    return await send_stream(
        request,
        behaviour,
        opening=[
            sse_event("message_start", {"type": "message_start", "message": start}),
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": content.start},
            ),
            sse_event("ping", {"type": "ping"}),
        ],
        content=(block_delta(piece) for piece in content.pieces),
        closing=[
            sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse_event("message_delta", {"type": "message_delta", "delta": delta, **final}),
            sse_event("message_stop", {"type": "message_stop"}),
        ],
        garbage=b"event: content_block_delta\ndata: {not json\n\n",
        headers={**SSE_HEADERS, **headers},
    )
