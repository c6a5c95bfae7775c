"""The Responses entry's checks and its translation into the chat pivot."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.domain import Usage
from gateway.entries.base import Limits
from gateway.entries.openai_responses import OPENAI_RESPONSES
from gateway.errors import BadRequest

LIMITS = Limits(max_body_bytes=1_000_000, max_messages=8, max_content_chars=200)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def parse(**body: Any) -> Any:
    return OPENAI_RESPONSES.parse({"model": "m", **body}, LIMITS, frozenset())


def test_items_become_chat_messages() -> None:
    chat = parse(instructions="Be terse.", input=[
        {"role": "user", "content": [
            {"type": "input_text", "text": "What is in "},
            {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"}]},
        {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "look", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "a dog"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "A cat."}]}],
        tools=[{"type": "function", "name": "look", "parameters": SCHEMA, "strict": True}],
        tool_choice={"type": "function", "name": "look"}, max_output_tokens=50,
        temperature=0.5, top_p=0.9, text={"format": {"type": "json_schema", "name": "out",
                                                      "schema": SCHEMA}},
        reasoning={"effort": "low"}, metadata={"team": "a"}, stream=True)
    assert chat.body == {
        "model": "m", "stream": True, "max_completion_tokens": 50, "temperature": 0.5,
        "top_p": 0.9, "reasoning_effort": "low",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in "},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png",
                                                    "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "look",
                                                              "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "look",
                                                              "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            {"role": "tool", "tool_call_id": "c2", "content": "a dog"},
            {"role": "assistant", "content": "A cat."}],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": SCHEMA,
                                                    "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "out",
                                                                   "schema": SCHEMA}}}
    assert (chat.stream, chat.max_output_tokens, chat.metadata) == (True, 50, {"team": "a"})
    assert (chat.entry, chat.entry_wire, chat.untranslatable) == (
        "openai_responses", "openai_responses", ())


def test_what_only_openai_takes_is_named() -> None:
    chat = parse(input="hi", previous_response_id="resp_1", background=True,
                 tools=[{"type": "web_search"}, {"type": "file_search"}],
                 include=["file_search_call.results"], reasoning={"summary": "auto"},
                 truncation="disabled", store=True)
    assert chat.untranslatable == (
        "previous_response_id", "background", "include", "tools[0] of type web_search",
        "tools[1] of type file_search", "reasoning.summary")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "input"), ({"input": []}, "input"), ({"input": [3]}, "input[0]"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"input": "x" * 201}, "input"), ({"input": "x", "max_output_tokens": 0},
                                      "max_output_tokens"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "x", "stream": "yes"}, "stream")])
def test_bad_bodies_are_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(**body)
    assert caught.value.details["field"] == field


def test_a_translated_completion_renders_as_a_response_object() -> None:
    chat = parse(input="hi", instructions="Be terse.", metadata={"k": "v"})
    completion = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "look", "arguments": "{}"}}]}}]}
    body = orjson.loads(OPENAI_RESPONSES.render(chat, completion, Usage(10, 4, 3)))
    assert (body["object"], body["status"], body["model"], body["instructions"],
            body["metadata"]) == ("response", "completed", "m", "Be terse.", {"k": "v"})
    assert [(i["type"], i["status"]) for i in body["output"]] == [
        ("message", "completed"), ("function_call", "completed")]
    assert body["output"][0]["content"][0]["text"] == "Looking."
    assert (body["output"][1]["call_id"], body["output"][1]["arguments"]) == ("call_1", "{}")
    assert body["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                             "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": 13}


def test_a_stream_cut_by_the_limit_ends_incomplete() -> None:
    chat = parse(input="hi", stream=True)
    encoder = OPENAI_RESPONSES.stream_encoder(chat, "rid")
    out = encoder.feed({"choices": [{"index": 0, "delta": {"content": "w1"}}]})
    out += encoder.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    out += encoder.close(Usage(5, 0, 1), b": cost\n\n")
    events = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert b": cost\n\n" in out


def test_parallel_calls_whose_deltas_interleave_keep_every_argument() -> None:
    """A provider may stream two calls' arguments interleaved: both items stay open, each
    delta names its own output_index, and the completed response has every argument."""
    chat = parse(input="hi", stream=True)
    encoder = OPENAI_RESPONSES.stream_encoder(chat, "rid")

    def call(index: int, **function: str) -> dict[str, Any]:
        extra = {"id": f"c{index}"} if "name" in function else {}
        return {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, **extra, "function": function}]}}]}

    out = encoder.feed({"choices": [{"index": 0, "delta": {"content": "Looking."}}]})
    out += encoder.feed(call(0, name="look", arguments='{"city":'))
    out += encoder.feed(call(1, name="look", arguments='{"city":'))
    out += encoder.feed(call(0, arguments=' "Paris"}'))
    out += encoder.feed(call(1, arguments=' "Rome"}'))
    out += encoder.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    out += encoder.close(Usage(5, 0, 9), b"")
    events = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [(e["output_index"], e["delta"]) for e in events
              if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == [(1, '{"city":'), (2, '{"city":'), (1, ' "Paris"}'), (2, ' "Rome"}')]
    done = [(e["output_index"], e["item"].get("arguments")) for e in events
            if e["type"] == "response.output_item.done"]
    assert done == [(0, None), (1, '{"city": "Paris"}'), (2, '{"city": "Rome"}')]
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "function_call"]
    assert [item.get("arguments") for item in output[1:]] == ['{"city": "Paris"}',
                                                              '{"city": "Rome"}']
    assert all(not k.startswith("_") for e in events if "item" in e for k in e["item"])
