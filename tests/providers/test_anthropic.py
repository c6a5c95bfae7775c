"""The Anthropic adapter: OpenAI pivot -> Messages request, Messages answers -> OpenAI shapes."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadGateway, BadRequest
from gateway.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicAdapter
from gateway.providers.base import Credential, ProviderAdapter
from gateway.settings import ProviderSettings

SETTINGS = ProviderSettings(kind="anthropic", base_url="https://api.anthropic.com")
OFFICIAL = Credential("default", "sk-ant-test", "https://api.anthropic.com/")
ADAPTER = AnthropicAdapter(SETTINGS)
_PROTOCOL_CHECK: ProviderAdapter = ADAPTER  # mypy: the adapter fits the protocol
USER = {"role": "user", "content": "Hello"}
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
PNG = "iVBORw0KGgo="


def chat_for(body: dict[str, Any], **fields: Any) -> ChatRequest:
    return ChatRequest(entry="openai", provider="anthropic", model=body["model"], body=body,
                       stream=body.get("stream") is True, include_usage=False,
                       max_output_tokens=None, **fields)


def built(**body: Any) -> dict[str, Any]:
    body = {"model": "claude-sonnet-4-5", "messages": [USER], **body}
    call = ADAPTER.build_call(chat_for(body), OFFICIAL)
    return dict(orjson.loads(call.body))


def rejected(**body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        built(**body)
    return caught.value


# -- build_call --------------------------------------------------------------------------------

def test_call_url_and_headers() -> None:
    call = ADAPTER.build_call(chat_for({"model": "m", "messages": [USER]}), OFFICIAL)
    assert call.url == "https://api.anthropic.com/v1/messages"
    assert call.headers == {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01",
                            "content-type": "application/json"}


def test_missing_key_is_refused_for_the_official_host_only() -> None:
    chat = chat_for({"model": "m", "messages": [USER]})
    with pytest.raises(BadRequest) as caught:
        ADAPTER.build_call(chat, Credential("default", "", "https://api.anthropic.com"))
    assert caught.value.code == "missing_provider_credential"
    assert caught.value.message.startswith(
        "no credential is configured for provider anthropic: set ANTHROPIC_API_KEY")
    local = ADAPTER.build_call(chat, Credential("local", "", "http://127.0.0.1:9000/"))
    assert local.url == "http://127.0.0.1:9000/v1/messages"
    assert "x-api-key" not in local.headers


def test_pass_through_sends_the_native_body_with_the_routed_model() -> None:
    native = {"model": "claude-latest", "max_tokens": 50, "top_k": 5,
              "thinking": {"type": "enabled", "budget_tokens": 2048},
              "messages": [{"role": "user", "content": [
                  {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]}
    chat = ChatRequest(entry="anthropic", provider="anthropic", model="claude-latest",
                       body={"model": "claude-opus-4-1", "messages": [USER]}, stream=False,
                       include_usage=False, max_output_tokens=50, entry_wire="anthropic",
                       native_body=native, untranslatable=("top_k", "thinking", "cache_control"))
    sent = orjson.loads(ADAPTER.build_call(chat, OFFICIAL).body)
    assert sent == {**native, "model": "claude-opus-4-1"}
    assert native["model"] == "claude-latest"  # the client's body is not changed in place


def test_untranslatable_features_of_another_entry_are_refused() -> None:
    chat = chat_for({"model": "m", "messages": [USER]}, entry_wire="gemini",
                    native_body={"contents": []}, untranslatable=("safetySettings",))
    with pytest.raises(BadRequest) as caught:
        ADAPTER.build_call(chat, OFFICIAL)
    assert caught.value.code == "untranslatable_feature"
    assert caught.value.details["feature"] == "safetySettings"


# -- request translation -----------------------------------------------------------------------

def test_plain_request_and_default_max_tokens() -> None:
    assert built() == {"model": "claude-sonnet-4-5", "max_tokens": DEFAULT_MAX_TOKENS,
                       "messages": [{"role": "user", "content": "Hello"}]}
    assert built(max_tokens=100)["max_tokens"] == 100
    assert built(max_tokens=100, max_completion_tokens=30)["max_tokens"] == 30


def test_system_and_developer_messages_become_system() -> None:
    one = built(messages=[{"role": "system", "content": "Be brief."}, USER])
    assert one["system"] == "Be brief."
    assert one["messages"] == [USER]
    two = built(messages=[{"role": "system", "content": "Be brief."},
                          {"role": "developer", "content": [{"type": "text", "text": "No jokes."}]},
                          USER])
    assert two["system"] == [{"type": "text", "text": "Be brief."},
                             {"type": "text", "text": "No jokes."}]


def test_images_by_data_url_and_by_http_url() -> None:
    body = built(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg",
                                            "detail": "auto"}}]}])
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]


@pytest.mark.parametrize("url", ["data:image/png,notbase64", "ftp://example.com/a.png"])
def test_bad_image_urls_are_refused(url: str) -> None:
    error = rejected(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}])
    assert error.details["field"] == "messages[0].content[0].image_url.url"


def test_tool_calls_and_results_round_trip() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Thanks"},
    ]
    body = built(messages=messages, tools=[WEATHER], tool_choice="auto")
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather",
             "input": {"city": "Rome"}}]},
        {"role": "user", "content": [  # consecutive tool results and the user turn: one turn
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2",
             "content": [{"type": "text", "text": "21C"}]},
            {"type": "text", "text": "Thanks"}]}]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city.",
                              "input_schema": WEATHER["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "auto"}


def test_assistant_turn_with_only_tool_calls_has_no_empty_text() -> None:
    body = built(messages=[USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]}])
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {}}]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_invalid_tool_arguments_are_a_400(arguments: str) -> None:
    error = rejected(messages=[USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}])
    assert error.status == 400
    assert error.details["field"] == "messages[1].tool_calls[0].function.arguments"


def test_consecutive_user_turns_are_merged() -> None:
    body = built(messages=[USER, {"role": "user", "content": [{"type": "text", "text": "again"}]}])
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Hello"}, {"type": "text", "text": "again"}]}]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert built(tools=[WEATHER], tool_choice=choice)["tool_choice"] == expected


def test_parallel_tool_calls_false() -> None:
    assert built(tools=[WEATHER], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    assert built(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)[
        "tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert "tool_choice" not in built(tools=[WEATHER], parallel_tool_calls=True)


def test_sampling_stop_stream_user_and_transport_fields() -> None:
    body = built(temperature=0.4, top_p=0.9, stop="END", stream=True, user="u-42",
                 stream_options={"include_usage": True}, metadata={"team": "search"})
    assert body["temperature"] == 0.4
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["stream"] is True
    assert body["metadata"] == {"user_id": "u-42"}  # the gateway's own metadata is not sent
    assert "stream_options" not in body
    assert built(stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_strict_tools_and_json_schema_output() -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = built(tools=[strict], response_format={
        "type": "json_schema", "json_schema": {"name": "reply", "schema": schema}})
    assert body["tools"][0]["strict"] is True
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in built(response_format={"type": "text"})


def test_temperature_above_one_is_refused() -> None:
    error = rejected(temperature=1.5)
    assert error.code == "untranslatable_feature"
    assert error.details == {"feature": "temperature", "features": ["temperature"],
                             "provider": "anthropic"}
    assert "temperature" in error.message and "anthropic" in error.message
    assert built(temperature=1)["temperature"] == 1


@pytest.mark.parametrize(("fields", "feature"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format json_object"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"seed": 7}, "seed"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0] of type custom"),
    ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice allowed_tools"),
    ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]},
     "messages[0].content[0] of type input_audio"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x.io/a.png", "detail": "low"}}]}]},
     "messages[0].content[0].image_url.detail"),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]},
     "messages[0] with role function"),
])
def test_untranslatable_features_are_a_400(fields: dict[str, Any], feature: str) -> None:
    error = rejected(**fields)
    assert error.code == "untranslatable_feature"
    assert error.details["feature"] == feature
    assert error.details["provider"] == "anthropic"


def test_every_untranslatable_feature_is_named_at_once() -> None:
    error = rejected(seed=1, n=3)
    assert error.details["features"] == ["seed", "n"]


def test_default_values_of_untranslatable_fields_are_no_feature() -> None:
    body = built(n=1, logprobs=False, presence_penalty=0, frequency_penalty=0, logit_bias={},
                 modalities=["text"], store=False, seed=None)
    assert set(body) == {"model", "max_tokens", "messages"}


def test_a_renamed_provider_names_itself() -> None:
    adapter = AnthropicAdapter(SETTINGS, name="claude-eu")
    assert adapter.name == "claude-eu" and adapter.wire == "anthropic"
    with pytest.raises(BadRequest) as caught:
        adapter.build_call(chat_for({"model": "m", "messages": [USER], "seed": 1}), OFFICIAL)
    assert caught.value.details["provider"] == "claude-eu"


# -- answers -----------------------------------------------------------------------------------

MESSAGE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "the weather."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
         "input": {"city": "Paris", "days": 2}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 100,
              "cache_creation_input_tokens": 20, "output_tokens": 7},
}


def test_parse_response_counts_cache_reads_and_writes_as_input() -> None:
    usage, model = ADAPTER.parse_response(orjson.dumps(MESSAGE))
    assert usage == Usage(input_tokens=130, cached_input_tokens=100, cache_write_tokens=20,
                          output_tokens=7)
    assert model == "claude-sonnet-4-5-20250929"
    no_usage = {k: v for k, v in MESSAGE.items() if k != "usage"}
    assert ADAPTER.parse_response(orjson.dumps(no_usage)) == (NO_USAGE,
                                                              "claude-sonnet-4-5-20250929")


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"choices": []}'])
def test_parse_response_refuses_what_is_not_a_message(body: bytes) -> None:
    with pytest.raises(ValueError):
        ADAPTER.parse_response(body)


def test_to_openai() -> None:
    completion = ADAPTER.to_openai(orjson.dumps(MESSAGE), chat_for({"model": "m", "messages": []}))
    assert completion["object"] == "chat.completion"
    assert completion["id"] == "msg_01"
    assert completion["model"] == "claude-sonnet-4-5-20250929"
    assert isinstance(completion["created"], int)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking the weather."  # no thinking
    assert choice["message"]["tool_calls"] == [{
        "id": "toolu_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":2}'}}]
    assert completion["usage"] == {"prompt_tokens": 130, "completion_tokens": 7,
                                   "total_tokens": 137,
                                   "prompt_tokens_details": {"cached_tokens": 100}}


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"),
    ("max_tokens", "length"), ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"),
])
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    message = {**MESSAGE, "content": [], "stop_reason": stop_reason}
    completion = ADAPTER.to_openai(orjson.dumps(message), chat_for({"model": "m", "messages": []}))
    assert completion["choices"][0]["finish_reason"] == finish
    assert completion["choices"][0]["message"]["content"] is None


# -- streams -----------------------------------------------------------------------------------

def start_event(usage: dict[str, int] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_s", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None}
    if usage is not None:
        message["usage"] = usage
    return {"type": "message_start", "message": message}


def translator() -> Any:
    return ADAPTER.stream_translator(chat_for({"model": "claude-alias", "messages": []}))


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks]


def test_text_stream_event_by_event() -> None:
    t = translator()
    first = t.feed("message_start", start_event(
        {"input_tokens": 5, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 3,
         "output_tokens": 1}))
    assert deltas(first) == [{"role": "assistant", "content": ""}]
    assert first[0]["id"] == "msg_s" and first[0]["model"] == "claude-x"
    assert first[0]["object"] == "chat.completion.chunk"
    assert t.model == "claude-x"
    assert t.usage == Usage(input_tokens=48, cached_input_tokens=40, cache_write_tokens=3,
                            output_tokens=0, output_source="none")
    assert t.feed("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}) == []
    assert t.feed("ping", {"type": "ping"}) == []
    hello = t.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": "Hel"}})
    assert deltas(hello) == [{"content": "Hel"}]
    assert t.feed("content_block_stop", {"type": "content_block_stop", "index": 0}) == []
    final = t.feed("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                     "usage": {"output_tokens": 9}})
    assert deltas(final) == [{}]
    assert final[0]["choices"][0]["finish_reason"] == "length"
    assert t.usage == Usage(input_tokens=48, cached_input_tokens=40, cache_write_tokens=3,
                            output_tokens=9)
    usage_chunk = t.feed("message_stop", {"type": "message_stop"})
    assert usage_chunk == [{**usage_chunk[0], "choices": [], "usage": {
        "prompt_tokens": 48, "completion_tokens": 9, "total_tokens": 57,
        "prompt_tokens_details": {"cached_tokens": 40}}}]
    assert t.close() == []


def test_message_delta_input_counts_override_the_start() -> None:
    t = translator()
    t.feed("message_start", start_event({"input_tokens": 0, "output_tokens": 1}))
    t.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                             "usage": {"input_tokens": 30, "cache_read_input_tokens": 10,
                                       "output_tokens": 4}})
    assert t.usage == Usage(input_tokens=40, cached_input_tokens=10, output_tokens=4)


def test_tool_calls_stream_with_openai_indexes_and_thinking_is_skipped() -> None:
    t = translator()
    t.feed(None, start_event({"input_tokens": 3, "output_tokens": 1}))
    events = [
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "sig"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather",
                           "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "toolu_b", "name": "get_time",
                           "input": {}}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 2},
    ]
    out = [delta for event in events for delta in deltas(t.feed(None, event))]
    assert out == [
        {"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_b", "type": "function",
                         "function": {"name": "get_time", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
    ]
    final = t.feed(None, {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                          "usage": {"output_tokens": 12}})
    assert final[0]["choices"][0]["finish_reason"] == "tool_calls"


def test_error_event_mid_stream_is_a_bad_gateway() -> None:
    t = translator()
    t.feed("message_start", start_event({"input_tokens": 3, "output_tokens": 1}))
    with pytest.raises(BadGateway) as caught:
        t.feed("error", {"type": "error",
                         "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert caught.value.code == "upstream_stream_error"
    assert "Overloaded" in caught.value.message
    assert caught.value.details["upstream_error"]["type"] == "overloaded_error"


def test_close_owes_the_usage_chunk_only_after_message_delta() -> None:
    cut = translator()
    cut.feed("message_start", start_event({"input_tokens": 3, "output_tokens": 1}))
    assert cut.close() == []  # cut before the end: no made-up finish
    assert cut.usage.output_source == "none" and cut.usage.input_tokens == 3
    ended = translator()
    ended.feed("message_start", start_event({"input_tokens": 3, "output_tokens": 1}))
    ended.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": 2}})
    owed = ended.close()
    assert owed[0]["choices"] == [] and owed[0]["usage"]["completion_tokens"] == 2
    assert ended.close() == []


def test_a_stream_without_usage_keeps_no_usage() -> None:
    t = translator()
    t.feed("message_start", start_event())
    t.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    assert t.usage is NO_USAGE
    assert t.feed("message_stop", {"type": "message_stop"}) == []


# -- errors ------------------------------------------------------------------------------------

def test_map_error_relays_anthropic_errors() -> None:
    body = orjson.dumps({"type": "error", "request_id": "req_1", "error": {
        "type": "rate_limit_error", "message": "Number of request tokens has exceeded"}})
    error = ADAPTER.map_error(429, body, {"Retry-After": "7", "anthropic-ratelimit-x": "1",
                                          "request-id": "req_1"})
    assert error.status == 429
    assert error.openai_type == "rate_limit_error"
    assert "Number of request tokens has exceeded" in error.message
    assert error.headers == {"Retry-After": "7"}
    assert error.details == {"provider": "anthropic", "upstream_status": 429, "upstream_error": {
        "type": "rate_limit_error", "message": "Number of request tokens has exceeded"}}


def test_map_error_overloaded_stays_529_and_plain_bodies_are_kept() -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "overloaded_error",
                                                    "message": "Overloaded"}})
    error = ADAPTER.map_error(529, body, {})
    assert error.status == 529 and error.openai_type == "api_error"
    plain = ADAPTER.map_error(502, b"<html>Bad gateway</html>", {})
    assert plain.status == 502 and "Bad gateway" in plain.message
    assert plain.details["upstream_error"] is None


# -- against the fake upstream -----------------------------------------------------------------

def sse_pairs(raw: bytes) -> list[tuple[str | None, Any]]:
    pairs = []
    for block in raw.decode().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = orjson.loads(line[5:].strip())
        if data is not None:
            pairs.append((name, data))
    return pairs


async def send(fake_url: str, chat: ChatRequest) -> tuple[int, bytes]:
    credential = Credential("fake", "sk-fake", fake_url.removesuffix("/v1"))
    call = ADAPTER.build_call(chat, credential)
    async with aiohttp.ClientSession() as session, session.post(
            call.url, data=call.body, headers=call.headers) as resp:
        return resp.status, await resp.read()


async def test_the_fake_accepts_a_translated_request(fake_upstream: Any) -> None:
    fake_upstream.script({"cached_tokens": 2})
    chat = chat_for({"model": "claude-test", "max_tokens": 5, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]})
    status, body = await send(fake_upstream.url, chat)
    assert status == 200, body
    usage, model = ADAPTER.parse_response(body)
    assert model == "claude-test"
    assert usage.output_tokens == 5 and usage.cached_input_tokens == 2
    assert usage.input_tokens > 2
    completion = ADAPTER.to_openai(body, chat)
    assert completion["choices"][0]["message"]["content"] == "w1 w2 w3 w4 w5"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["prompt_tokens"] == usage.input_tokens


async def test_the_fake_streams_a_tool_call_through_the_translator(fake_upstream: Any) -> None:
    chat = chat_for({"model": "claude-test", "stream": True, "tools": [WEATHER],
                     "messages": [{"role": "user", "content": "Please use tool now"}]})
    status, raw = await send(fake_upstream.url, chat)
    assert status == 200, raw
    t = ADAPTER.stream_translator(chat)
    chunks = [c for name, data in sse_pairs(raw) for c in t.feed(name, data)] + t.close()
    calls = [d["tool_calls"][0] for d in deltas([c for c in chunks if c["choices"]])
             if "tool_calls" in d]
    assert calls[0]["id"].startswith("toolu_fake_") and calls[0]["function"]["name"] == (
        "get_weather")
    arguments = orjson.loads("".join(c["function"]["arguments"] for c in calls))
    assert set(arguments) == {"city"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert t.usage.output_source == "provider" and t.usage.input_tokens > 0


async def test_the_fake_error_is_mapped(fake_upstream: Any) -> None:
    fake_upstream.script({"status": 529})
    status, body = await send(fake_upstream.url, chat_for({"model": "m", "messages": [USER]}))
    error = ADAPTER.map_error(status, body, {})
    assert error.status == 529 and "Overloaded" in error.message
