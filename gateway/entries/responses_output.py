"""Translated answers in the Responses API's shapes: a `response` object for a pivot
completion, and a pivot chunk stream as Responses events, in the order OpenAI sends them.

    response.created, response.in_progress,
    per message:  output_item.added, content_part.added, output_text.delta..., output_text.done,
                  content_part.done, output_item.done
    per tool call: output_item.added, function_call_arguments.delta..., .done, output_item.done
    response.completed (or response.incomplete when the output hit its limit), with usage

Every event carries a `sequence_number` that counts up from 0.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.domain import ChatRequest, Usage
from gateway.entries.base import PivotStream

# Request fields a response object echoes, with OpenAI's defaults.
_ECHOED: dict[str, Any] = {"instructions": None, "max_output_tokens": None,
                           "parallel_tool_calls": True, "previous_response_id": None,
                           "temperature": 1.0, "tool_choice": "auto", "tools": [],
                           "top_p": 1.0, "user": None}


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.input_tokens + usage.output_tokens}


def response_object(chat: ChatRequest, response_id: str, created: int, status: str,
                    output: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
    """A `response` object echoing the request, as OpenAI answers it."""
    body = chat.native_body or {}
    echoed = {k: body[k] if body.get(k) is not None else default
              for k, default in _ECHOED.items()}
    text: dict[str, Any] = body["text"] if isinstance(body.get("text"), dict) else {}
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status,
        "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete"
        else None,
        **echoed, "model": chat.model, "output": output,
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "store": False, "text": {"format": {"type": "text"}, **text},
        "truncation": "disabled", "metadata": body.get("metadata") or {},
        "usage": responses_usage(usage) if usage is not None else None,
    }


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call(item_id: str, call_id: str, name: str, arguments: str,
          status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def render_response(chat: ChatRequest, completion: dict[str, Any], usage: Usage) -> bytes:
    """A pivot `chat.completion` as a Responses `response` object."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    base = uuid.uuid4().hex
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        output.append(_message(f"msg_{base}", text, "completed"))
    for n, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        output.append(_call(f"fc_{base}_{n}", call.get("id") or f"call_{base}_{n}",
                            function.get("name") or "", function.get("arguments") or "",
                            "completed"))
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    created = completion.get("created")
    return orjson.dumps(response_object(
        chat, f"resp_{base}", created if isinstance(created, int) else int(time.time()),
        status, output, usage))


class ResponsesStreamEncoder(PivotStream):
    """Pivot chunks as Responses stream events (see the module docstring for the order)."""

    def __init__(self, chat: ChatRequest, request_id: str) -> None:
        self._chat = chat
        self._base = request_id.replace("-", "")
        self._id = f"resp_{self._base}"
        self._created = int(time.time())
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # items done so far
        self._open: dict[str, Any] | None = None  # the message being streamed
        # Function calls being streamed, by pivot tool call index: all stay open until the
        # text resumes or the stream ends, since a provider may interleave parallel calls'
        # argument deltas (each event names its item's output_index).
        self._calls: dict[int, dict[str, Any]] = {}
        self._tools: dict[int, dict[str, Any]] = {}  # every call seen, by pivot index
        self._added = 0  # output_index of the next item added
        self._finish = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = response_object(self._chat, self._id, self._created, "in_progress", [], None)
        return (self._event("response.created", response=response)
                + self._event("response.in_progress", response=response))

    def close(self, usage: Usage, trailer: bytes) -> bytes:
        status = "incomplete" if self._finish == "length" else "completed"
        closing = self._close_item() + self._close_calls()
        response = response_object(self._chat, self._id, self._created, status,
                                   self._output, usage)
        return b"".join((self._start(), closing, trailer,
                         self._event(f"response.{status}", response=response)))

    def _add(self, item: dict[str, Any]) -> bytes:
        """A new item: a message closes what is open; a call closes an open message."""
        closing = self._close_item() + (self._close_calls() if item["type"] == "message"
                                        else b"")
        item["_index"] = self._added
        self._added += 1
        if item["type"] == "message":
            self._open = item
        return closing + self._event("response.output_item.added",
                                     output_index=item["_index"], item=_public(item))

    def _text(self, text: str) -> bytes:
        opening = b""
        if self._open is None or self._open["type"] != "message":
            item = _message(f"msg_{self._base}_{len(self._output)}", "", "in_progress")
            item["_text"] = []
            opening = self._add(item) + self._event(
                "response.content_part.added", item_id=item["id"],
                output_index=item["_index"], content_index=0, part=_part(""))
        assert self._open is not None
        self._open["_text"].append(text)
        return opening + self._event(
            "response.output_text.delta", item_id=self._open["id"],
            output_index=self._open["_index"], content_index=0, delta=text, logprobs=[])

    def _tool(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = call.get("function") or {}
        opening = b""
        if index not in self._tools:
            n = self._added
            item = _call(f"fc_{self._base}_{n}", call.get("id") or f"call_{self._base}_{n}",
                         function.get("name") or "", "", "in_progress")
            self._tools[index] = self._calls[index] = item
            opening = self._add(item)
        open_call = self._calls.get(index)
        arguments = function.get("arguments")
        if not arguments or open_call is None:  # deltas after its call was closed: none known
            return opening
        open_call["arguments"] += arguments
        return opening + self._event("response.function_call_arguments.delta",
                                     item_id=open_call["id"], output_index=open_call["_index"],
                                     delta=arguments)

    def _close_calls(self) -> bytes:
        """Every open function call, in output order."""
        calls = sorted(self._calls.values(), key=lambda item: item["_index"])
        self._calls.clear()
        return b"".join(self._done(item) for item in calls)

    def _close_item(self) -> bytes:
        item, self._open = self._open, None
        return b"" if item is None else self._done(item)

    def _done(self, item: dict[str, Any]) -> bytes:
        index = item.pop("_index")
        out = []
        if item["type"] == "message":
            text = "".join(item.pop("_text"))
            out.append(self._event("response.output_text.done", item_id=item["id"],
                                   output_index=index, content_index=0, text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", item_id=item["id"],
                                   output_index=index, content_index=0, part=_part(text)))
            item = _message(item["id"], text, "completed")
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=index, name=item["name"],
                                   arguments=item["arguments"]))
            item = {**item, "status": "completed"}
        self._output.append(item)
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return b"".join(out)

    @staticmethod
    def error(code: str, message: str) -> bytes:
        """An error event, for a stream that already started."""
        data = {"type": "error", "code": code, "message": message, "param": None,
                "sequence_number": 0}
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """An item as clients see it (without the encoder's own `_` fields)."""
    return {k: v for k, v in item.items() if not k.startswith("_")}
