"""The /v1/messages entry shape: checks, the OpenAI pivot, and answers the Anthropic SDK reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.entries.anthropic import (
    AnthropicStreamEncoder,
    error_body,
    error_event,
    message_id,
    render_completion,
    validate_messages,
)
from gateway.entries.base import Limits
from gateway.entries.openai_chat import validate_openai
from gateway.errors import BadRequest
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Credential
from gateway.settings import ProviderSettings

LIMITS = Limits(max_body_bytes=1_000_000, max_messages=8, max_content_chars=200)
ADAPTER = AnthropicAdapter(ProviderSettings(kind="anthropic", base_url="https://api.anthropic.com"))
CREDENTIAL = Credential("default", "sk-ant", "https://api.anthropic.com")
PNG = "iVBORw0KGgo="
WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def body_of(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hello"}], **fields}


def problems(body: dict[str, Any], limits: Limits = LIMITS) -> dict[str, str]:
    with pytest.raises(BadRequest) as caught:
        validate_messages(body, limits)
    return {e["field"]: e["message"] for e in caught.value.details["errors"]}


# -- validation --------------------------------------------------------------------------------

def test_a_valid_request_becomes_a_chat_request() -> None:
    body = body_of(system="Be brief.", temperature=0.5, stream=True,
                   metadata={"user_id": "u-1"})
    chat = validate_messages(body, LIMITS)
    assert (chat.entry, chat.entry_wire, chat.provider) == ("anthropic", "anthropic", "")
    assert chat.model == "claude-sonnet-4-5"
    assert chat.stream is True and chat.include_usage is False
    assert chat.max_output_tokens == 64
    assert chat.metadata == {}
    assert chat.native_body is body
    assert chat.untranslatable == ()
    assert chat.body == {
        "model": "claude-sonnet-4-5", "max_completion_tokens": 64, "temperature": 0.5,
        "stream": True, "user": "u-1",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello"}]}
    assert validate_openai(chat.body, LIMITS).stream is True


def test_every_problem_is_named_in_one_400() -> None:
    found = problems({"model": "", "messages": [{"role": "system", "content": "x"},
                                                 {"role": "user", "content": 3},
                                                 {"role": "user", "content": [{"text": "t"}]}],
                      "temperature": 1.5, "top_p": -1, "top_k": "many",
                      "stop_sequences": ["ok", 1], "stream": "yes", "tools": [{"name": "f"}],
                      "tool_choice": {"type": "tool"}, "metadata": [], "system": 5})
    assert set(found) == {
        "model", "max_tokens", "messages[0].role", "messages[1].content",
        "messages[2].content[0]", "temperature", "top_p", "top_k", "stop_sequences", "stream",
        "tools[0].input_schema", "tool_choice.name", "metadata", "system"}
    assert "required" in found["max_tokens"]


@pytest.mark.parametrize("max_tokens", [0, -3, 1.5, True, "10"])
def test_max_tokens_must_be_a_positive_integer(max_tokens: Any) -> None:
    assert "max_tokens" in problems(body_of(max_tokens=max_tokens))


@pytest.mark.parametrize("messages", [None, [], "Hello", [{"role": "user"}]])
def test_messages_must_be_a_non_empty_array_of_turns(messages: Any) -> None:
    assert any(f.startswith("messages") for f in problems(body_of(messages=messages)))


def test_block_fields_are_checked() -> None:
    found = problems(body_of(messages=[
        {"role": "user", "content": [{"type": "text", "text": 1},
                                     {"type": "image", "source": "x"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]},
        {"role": "user", "content": [{"type": "tool_result"}]}]))
    assert set(found) == {"messages[0].content[0].text", "messages[0].content[1].source",
                          "messages[1].content[0].input", "messages[2].content[0].tool_use_id"}


def test_limits_on_messages_and_content() -> None:
    many = [{"role": "user", "content": "hi"}] * 9
    assert "messages" in problems(body_of(messages=many))
    long = "x" * 150
    blocks = [{"type": "text", "text": long},
              {"type": "tool_result", "tool_use_id": "t", "content": [
                  {"type": "text", "text": long}]}]
    assert "messages[0].content" in problems(
        body_of(messages=[{"role": "user", "content": blocks}]))
    assert "system" in problems(body_of(system="y" * 201))
    validate_messages(body_of(messages=[{"role": "user", "content": long}]), LIMITS)


# -- what the pivot cannot carry ---------------------------------------------------------------

def test_untranslatable_features_are_named() -> None:
    body = body_of(
        top_k=5, thinking={"type": "enabled", "budget_tokens": 2048}, service_tier="auto",
        container="c1", mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}],
        system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        stop_sequences=["a", "b", "c", "d", "e"],
        tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
        metadata={"user_id": "u", "trace": "t"}, output_config={"effort": "low"},
        messages=[
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                "data": "JVBER"}},
                {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                {"type": "text", "text": "Summarise"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "redacted_thinking", "data": "xx"},
                {"type": "text", "text": "See", "citations": [{"type": "char_location"}]},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": PNG}}]}]}])
    chat = validate_messages(body, LIMITS)
    assert set(chat.untranslatable) == {
        "top_k", "thinking", "service_tier", "container", "mcp_servers", "cache_control",
        "more than 4 stop_sequences", "web_search_20250305 tool", "metadata.trace",
        "output_config.effort", "document blocks", "image source file", "redacted_thinking",
        "citations", "image blocks in tool results", "tool_result.is_error"}
    assert len(chat.untranslatable) == len(set(chat.untranslatable))
    validate_openai(chat.body, LIMITS)  # the pivot stays a valid OpenAI body all the same
    assert [t["function"]["name"] for t in chat.body["tools"]] == ["get_weather"]
    # Sent to Anthropic, the client's body goes as it is; elsewhere it is a 400 naming them.
    routed = {**chat.body, "model": "claude-opus-4-1"}
    sent = orjson.loads(ADAPTER.build_call(dataclasses.replace(chat, body=routed),
                                           CREDENTIAL).body)
    assert sent == {**body, "model": "claude-opus-4-1"}
    with pytest.raises(BadRequest) as caught:
        ADAPTER.build_call(dataclasses.replace(chat, native_body=None), CREDENTIAL)
    assert caught.value.code == "untranslatable_feature"


def test_disabled_thinking_is_no_feature() -> None:
    assert validate_messages(body_of(thinking={"type": "disabled"}), LIMITS).untranslatable == ()


# -- round trip: Anthropic request -> pivot -> Anthropic request -------------------------------

ROUND_TRIPS = {
    "plain": body_of(),
    "everything": body_of(
        system=[{"type": "text", "text": "You are terse."}, {"type": "text", "text": "No jokes."}],
        temperature=0.2, top_p=0.9, stop_sequences=["END", "STOP"], stream=True,
        tools=[WEATHER, {**WEATHER, "name": "strict_weather", "strict": True}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        metadata={"user_id": "u-7"},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "Weather where this photo was taken?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://x.io/b.jpg"}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Looking it up."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                 "input": {"city": "Rome", "days": [1, 2]}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2",
                 "content": [{"type": "text", "text": "21C"}]},
                {"type": "text", "text": "And tomorrow?"}]},
            {"role": "assistant", "content": "Warmer."},
            {"role": "user", "content": "Thanks"}]),
    "tool by name": body_of(system="Sys", tools=[WEATHER],
                            tool_choice={"type": "tool", "name": "get_weather"}),
    "tool choice none": body_of(tools=[WEATHER], tool_choice={"type": "none"}),
    "tool use only": body_of(messages=[
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": "ok"}]}], tools=[WEATHER]),
}


@pytest.mark.parametrize("body", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip_through_the_pivot(body: dict[str, Any]) -> None:
    chat = validate_messages(body, LIMITS)
    assert chat.untranslatable == ()
    assert validate_openai(chat.body, LIMITS).model == body["model"]
    # As a non-Anthropic entry would reach Anthropic: only the pivot, translated.
    translated = dataclasses.replace(chat, entry_wire="openai", native_body=None)
    sent = orjson.loads(ADAPTER.build_call(translated, CREDENTIAL).body)
    assert sent == body


# -- completions -------------------------------------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109},
}
USAGE = Usage(input_tokens=100, cached_input_tokens=60, cache_write_tokens=15, output_tokens=9)


def test_render_completion_is_a_message_the_sdk_reads() -> None:
    rendered = render_completion(COMPLETION, USAGE, "gpt-4o")
    message = anthropic.types.Message.model_validate(rendered)
    assert message.id == "msg_abc123"
    assert message.model == "gpt-4o"
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    text, tool = message.content
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "Let me check."
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    assert (tool.id, tool.name, tool.input) == ("call_9", "get_weather", {"city": "Oslo"})
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.cache_creation_input_tokens, message.usage.output_tokens) == (
        25, 60, 15, 9)


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("content_filter", "refusal"), (None, "end_turn")])
def test_render_completion_stop_reasons(finish: str | None, stop_reason: str) -> None:
    completion = {"id": "c", "choices": [{"index": 0, "finish_reason": finish,
                                          "message": {"role": "assistant", "content": None}}]}
    rendered = render_completion(completion, NO_USAGE, "m")
    assert rendered["stop_reason"] == stop_reason
    assert rendered["content"] == []
    anthropic.types.Message.model_validate(rendered)


def test_render_completion_keeps_unparseable_arguments() -> None:
    completion = {"id": "c", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}}]}
    block = render_completion(completion, NO_USAGE, "m")["content"][0]
    assert block["input"] == {"_raw_arguments": "{oops"}


def test_message_ids() -> None:
    assert message_id("chatcmpl-xyz") == "msg_xyz"
    assert message_id("msg_01") == "msg_01"
    assert message_id(None).startswith("msg_") and len(message_id(None)) > 10


# -- streams through the SDK -------------------------------------------------------------------

def sdk_for(handler: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="k", base_url="http://gateway.test", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def serving(raw: bytes, status: int = 200) -> anthropic.Anthropic:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        return httpx2.Response(status, content=raw,
                              headers={"content-type": "text/event-stream"})
    return sdk_for(handler)


def sdk_stream(raw: bytes) -> tuple[list[Any], anthropic.types.Message]:
    client = serving(raw)
    with client.messages.stream(model="m", max_tokens=10,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        events = list(stream)
        return events, stream.get_final_message()


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def tool_delta(index: int, arguments: str, call_id: str | None = None,
               name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def encode(chunks: list[dict[str, Any]], usage: Usage, finish: str | None) -> bytes:
    encoder = AnthropicStreamEncoder("gpt-4o", "msg_gw1")
    return b"".join(encoder.feed(c) for c in chunks) + encoder.close(usage, finish)


def test_encoder_events_one_by_one() -> None:
    encoder = AnthropicStreamEncoder("gpt-4o", "msg_gw1")
    first = encoder.feed(chunk({"role": "assistant", "content": ""}))
    assert first.startswith(b"event: message_start\ndata: ") and first.endswith(b"\n\n")
    start = orjson.loads(first.split(b"data: ")[1])
    assert start["message"]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert start["message"]["id"] == "msg_gw1"
    text = encoder.feed(chunk({"content": "Hi"}))
    assert [line for line in text.split(b"\n") if line.startswith(b"event:")] == [
        b"event: content_block_start", b"event: content_block_delta"]
    assert encoder.feed(chunk({"content": " there"})).count(b"event:") == 1
    tool = encoder.feed(chunk(tool_delta(0, "", "call_1", "f")))
    assert [line for line in tool.split(b"\n") if line.startswith(b"event:")] == [
        b"event: content_block_stop", b"event: content_block_start"]
    usage_only = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                  "choices": [], "usage": {"prompt_tokens": 3}}
    assert encoder.feed(usage_only) == b""
    end = encoder.close(Usage(input_tokens=3, output_tokens=2), "tool_calls")
    names = [line for line in end.split(b"\n") if line.startswith(b"event:")]
    assert names == [b"event: content_block_stop", b"event: message_delta",
                     b"event: message_stop"]
    delta = orjson.loads(end.split(b"data: ")[2].split(b"\n")[0])
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 2, "input_tokens": 3,
                              "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def test_encoded_text_and_tool_calls_read_by_the_sdk() -> None:
    raw = encode([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking"}),
        chunk({"content": " both."}),
        chunk(tool_delta(0, "", "call_a", "get_weather")),
        chunk(tool_delta(0, '{"city":')),
        chunk(tool_delta(0, '"Paris"}')),
        chunk(tool_delta(1, '{"city":"Rome"}', "call_b", "get_weather")),
        chunk({}, "tool_calls"),
    ], USAGE, None)
    events, message = sdk_stream(raw)
    assert message.id == "msg_gw1" and message.model == "gpt-4o"
    assert message.stop_reason == "tool_use"
    text, paris, rome = message.content
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "Checking both."
    assert isinstance(paris, anthropic.types.ToolUseBlock)
    assert isinstance(rome, anthropic.types.ToolUseBlock)
    assert (paris.id, paris.name, paris.input) == ("call_a", "get_weather", {"city": "Paris"})
    assert (rome.id, rome.input) == ("call_b", {"city": "Rome"})
    assert (message.usage.input_tokens, message.usage.output_tokens,
            message.usage.cache_read_input_tokens,
            message.usage.cache_creation_input_tokens) == (25, 9, 60, 15)
    texts = [e.text for e in events if e.type == "text"]
    assert texts == ["Checking", " both."]


def test_an_empty_stream_is_still_a_message() -> None:
    encoder = AnthropicStreamEncoder("m", "msg_empty", input_tokens=7)
    raw = encoder.close(Usage(input_tokens=7, output_tokens=0), "length")
    _, message = sdk_stream(raw)
    assert message.content == [] and message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == 7


def anthropic_sse() -> Iterator[tuple[str, dict[str, Any]]]:
    """What Anthropic streams for a text block, a thinking block and a tool call."""
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 11, "cache_read_input_tokens": 4, "output_tokens": 1}}}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "thinking", "thinking": ""}}
    yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "thinking_delta", "thinking": "hmm"}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "content_block_start", {"type": "content_block_start", "index": 1,
                                  "content_block": {"type": "text", "text": ""}}
    yield "ping", {"type": "ping"}
    for piece in ("Sure", ", one moment."):
        yield "content_block_delta", {"type": "content_block_delta", "index": 1,
                                      "delta": {"type": "text_delta", "text": piece}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 1}
    yield "content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_z", "name": "get_weather", "input": {}}}
    for piece in ('{"ci', 'ty": "Lima"}'):
        yield "content_block_delta", {"type": "content_block_delta", "index": 2,
                                      "delta": {"type": "input_json_delta", "partial_json": piece}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 2}
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                            "usage": {"output_tokens": 21}}
    yield "message_stop", {"type": "message_stop"}


def test_provider_stream_to_pivot_to_entry_stream() -> None:
    chat = validate_messages(body_of(stream=True), LIMITS)
    translator = ADAPTER.stream_translator(chat)
    encoder = AnthropicStreamEncoder(chat.model, "msg_chain")
    raw = b"".join(encoder.feed(c) for name, data in anthropic_sse()
                   for c in translator.feed(name, data))
    raw += b"".join(encoder.feed(c) for c in translator.close())
    raw += encoder.close(translator.usage, None)
    _, message = sdk_stream(raw)
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "Sure, one moment."
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    assert (tool.id, tool.input) == ("toolu_z", {"city": "Lima"})
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (11, 4, 21)


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind", "exception"), [
    (400, "invalid_request_error", anthropic.BadRequestError),
    (401, "authentication_error", anthropic.AuthenticationError),
    (403, "permission_error", anthropic.PermissionDeniedError),
    (404, "not_found_error", anthropic.NotFoundError),
    (413, "request_too_large", anthropic.APIStatusError),
    (429, "rate_limit_error", anthropic.RateLimitError),
    (500, "api_error", anthropic.InternalServerError),
    (529, "overloaded_error", anthropic.InternalServerError),
])
def test_error_bodies_the_sdk_raises(status: int, kind: str,
                                     exception: type[Exception]) -> None:
    body = error_body(status, "it went wrong")
    assert body == {"type": "error", "error": {"type": kind, "message": "it went wrong"}}

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=body)

    with pytest.raises(exception) as caught:
        sdk_for(handler).messages.create(model="m", max_tokens=5,
                                         messages=[{"role": "user", "content": "hi"}])
    assert "it went wrong" in str(caught.value)


def test_an_error_event_mid_stream_is_raised_by_the_sdk() -> None:
    encoder = AnthropicStreamEncoder("m", "msg_e")
    raw = encoder.feed(chunk({"content": "partial"})) + error_event(529, "Overloaded")
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_stream(raw)
    assert "Overloaded" in str(caught.value)


def test_dataclass_fields_stay_as_the_pipeline_expects() -> None:
    chat = validate_messages(body_of(), LIMITS)
    assert isinstance(chat, ChatRequest)
    assert {f.name for f in dataclasses.fields(chat)} >= {"entry_wire", "native_body",
                                                          "untranslatable"}
