"""OpenAI Responses API: ``POST /v1/responses`` (JSON, and SSE with every event in OpenAI's
order, each with its ``sequence_number``), ``GET`` and ``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items`` for responses it stored (``store`` is true unless the
request says false); each is logged like any request.

Token rule: input_tokens is ``count_prompt_tokens`` (as for chat completions) of the input as
messages: ``instructions`` as a system message, a string input as a user message, each message
item with its text parts, each function call item as an assistant message whose text is its
arguments, each function call output as a tool message whose text is its output.
output_tokens is the reply's word count, or the tool call arguments' o200k tokens when the fake
calls a function (the chat rule of ``fake_openai.chosen_tool``). cached_tokens is the scripted
count, clamped to input_tokens.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.testing.fake_behaviour import (
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
from gateway.testing.fake_openai import chosen_tool, count_prompt_tokens, openai_error
from gateway.testing.fake_reply import json_token_pieces, plan_reply, tool_arguments

STORED = web.AppKey("fake_stored_responses", dict)  # response id -> (response, input items)


def as_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as chat messages (the token rule in the module docstring)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    source = body.get("input")
    items = [{"role": "user", "content": source}] if isinstance(source, str) else source
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [{"type": "text", "text": p["text"]} for p in content
                           if isinstance(p, dict) and isinstance(p.get("text"), str)]
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": item.get("arguments")})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "content": output if isinstance(output, str)
                             else ""})
    return messages


def _chat_tools(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The request's function tools as a chat body, for ``chosen_tool``."""
    tools = [{"type": "function", "function": t} for t in body.get("tools") or ()
             if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return {"tools": tools, "tool_choice": choice, "messages": messages}


def usage_object(input_tokens: int, output_tokens: int, cached: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``."""
    turn = await open_turn(request, openai_error)
    if not isinstance(turn, Turn):
        return turn
    body = turn.body
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return openai_error(400, "You must provide a model parameter.")
    if not isinstance(body.get("input"), str | list):
        return openai_error(400, "Missing required parameter: 'input'.")
    state, behaviour = request.app[STATE], turn.behaviour
    messages = as_messages(body)
    reply = plan_reply(behaviour, state.reply_tokens, body.get("max_output_tokens"))
    number = state.next_number()
    tool = chosen_tool(_chat_tools(body, messages))
    pieces = json_token_pieces(tool_arguments(tool.get("parameters"))) if tool else []
    usage = None
    if not behaviour.get("no_usage"):
        prompt = count_prompt_tokens(messages)
        usage = usage_object(prompt, len(pieces) if tool else len(reply.words),
                             min(behaviour.get("cached_tokens", 0), prompt))
    incomplete = tool is None and reply.finish == "length"
    response: dict[str, Any] = {
        "id": f"resp_fake{number}", "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed", "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": body["model"],
        "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0), "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
        "user": None, "metadata": body.get("metadata") or {}}
    if tool is not None:
        item: dict[str, Any] = {
            "id": f"fc_fake{number}", "type": "function_call", "status": "completed",
            "call_id": f"call_fake{number}", "name": str(tool.get("name")),
            "arguments": "".join(pieces)}
    else:
        item = {"id": f"msg_fake{number}", "type": "message", "status": "completed",
                "role": "assistant", "content": [
                    {"type": "output_text", "text": reply.text, "annotations": [],
                     "logprobs": []}]}
    done = {**response, "output": [item]}
    if response["store"]:
        request.app[STORED][response["id"]] = (done, messages)
    if not wants_stream(body, behaviour):
        return body_response(done, behaviour)
    content = reply.pieces() if tool is None else pieces
    return await _stream(request, behaviour, response, item, content, done)


async def _stream(request: web.Request, behaviour: dict[str, Any], response: dict[str, Any],
                  item: dict[str, Any], content: list[str],
                  done: dict[str, Any]) -> web.StreamResponse:
    sequence = iter(range(10**6))

    def event(kind: str, **fields: Any) -> bytes:
        return sse_event(kind, {"type": kind, "sequence_number": next(sequence), **fields})

    started = {**response, "status": "in_progress", "usage": None,
               "incomplete_details": None}
    at = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "message":
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        opening = [event("response.created", response=started),
                   event("response.in_progress", response=started),
                   event("response.output_item.added", output_index=0,
                         item={**item, "status": "in_progress", "content": []}),
                   event("response.content_part.added", **at, content_index=0, part=empty)]
        deltas = [event("response.output_text.delta", **at, content_index=0, delta=piece,
                        logprobs=[]) for piece in content]
        part = item["content"][0]
        closing = [event("response.output_text.done", **at, content_index=0,
                         text=part["text"], logprobs=[]),
                   event("response.content_part.done", **at, content_index=0, part=part)]
    else:
        opening = [event("response.created", response=started),
                   event("response.in_progress", response=started),
                   event("response.output_item.added", output_index=0,
                         item={**item, "status": "in_progress", "arguments": ""})]
        deltas = [event("response.function_call_arguments.delta", **at, delta=piece)
                  for piece in content]
        closing = [event("response.function_call_arguments.done", **at, name=item["name"],
                         arguments=item["arguments"])]

    closing += [event("response.output_item.done", output_index=0, item=item),
                event(f"response.{done['status']}", response=done)]
    return await send_stream(request, behaviour, opening=opening, content=deltas,
                             closing=closing, garbage=b"data: {not json\n\n")


async def retrieve(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}``."""
    record_request(request, b"")
    stored = request.app[STORED].get(request.match_info["id"])
    if stored is None:
        return _not_found(request.match_info["id"])
    return json_response(stored[0])


async def delete(request: web.Request) -> web.Response:
    """``DELETE /v1/responses/{id}``."""
    record_request(request, b"")
    response_id = request.match_info["id"]
    if request.app[STORED].pop(response_id, None) is None:
        return _not_found(response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}/input_items``."""
    record_request(request, b"")
    response_id = request.match_info["id"]
    stored = request.app[STORED].get(response_id)
    if stored is None:
        return _not_found(response_id)
    items = [{"id": f"msg_in{response_id}_{n}", "type": "message", "status": "completed",
              "role": m["role"], "content": [{"type": "input_text", "text": m["content"]}]}
             for n, m in enumerate(stored[1]) if isinstance(m.get("content"), str)]
    return json_response({"object": "list", "data": items,
                          "first_id": items[0]["id"] if items else None,
                          "last_id": items[-1]["id"] if items else None, "has_more": False})


def _not_found(response_id: str) -> web.Response:
    return openai_error(404, f"Response with id '{response_id}' not found.")
