"""The Cohere adapter: OpenAI-shaped requests to Chat v2 bodies and Cohere's answers (JSON,
named SSE events, errors) back to OpenAI's shape, checked directly and against the fake."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from conftest import FakeUpstream

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadRequest
from gateway.providers.base import Credential
from gateway.providers.cohere import CohereAdapter
from gateway.settings import ProviderSettings
from gateway.testing.fake_cohere import count_billed_input_tokens
from gateway.testing.fake_reply import json_token_pieces
from tests.testing.fake_wire import DEFAULT_REPLY

HOST = "https://api.cohere.com"
ADAPTER = CohereAdapter(ProviderSettings(kind="cohere", base_url=HOST))
KEY = Credential("main", "co-secret", HOST)
MODEL = "command-a-03-2025"
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CLOCK: dict[str, Any] = {"type": "function",
                         "function": {"name": "get_time", "parameters": {"type": "object"}}}


def chat(body: dict[str, Any], *, stream: bool = False, **extra: Any) -> ChatRequest:
    body = {"model": MODEL, **body}
    return ChatRequest(entry="openai", provider="cohere", model=body["model"], body=body,
                       stream=stream, include_usage=False, max_output_tokens=None, **extra)


def built(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The Chat v2 body built for an OpenAI-shaped body."""
    result: dict[str, Any] = orjson.loads(ADAPTER.build_call(chat(body, **extra), KEY).body)
    return result


def user(text: str = "Hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def rejected(body: dict[str, Any], **extra: Any) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        ADAPTER.build_call(chat(body, **extra), KEY)
    return caught.value


# -- build_call: URL, headers, credentials -----------------------------------------------------

def test_url_and_headers() -> None:
    call = ADAPTER.build_call(chat({"messages": [user()]}), KEY)
    assert call.url == f"{HOST}/v2/chat"
    assert call.headers == {"Content-Type": "application/json", "Accept": "application/json",
                            "Authorization": "Bearer co-secret"}
    assert orjson.loads(call.body) == {"model": MODEL, "stream": False,
                                       "messages": [{"role": "user", "content": "Hi"}]}
    streamed = ADAPTER.build_call(chat({"messages": [user()]}, stream=True),
                                  Credential("c", "k", HOST + "/"))
    assert streamed.url == f"{HOST}/v2/chat"
    assert streamed.headers["Accept"] == "text/event-stream"
    assert orjson.loads(streamed.body)["stream"] is True


def test_missing_key_on_cohere_is_a_400() -> None:
    with pytest.raises(BadRequest) as caught:
        ADAPTER.build_call(chat({"messages": [user()]}), Credential("c", "", HOST))
    assert caught.value.code == "missing_provider_credential"
    assert "COHERE_API_KEY" in caught.value.message
    local = ADAPTER.build_call(chat({"messages": [user()]}), Credential("c", "", "http://l"))
    assert "Authorization" not in local.headers


def test_native_cohere_body_passes_through_with_the_routed_model() -> None:
    native = {"model": "alias", "messages": [{"role": "user", "content": "x"}],
              "documents": ["doc"], "safety_mode": "STRICT"}
    request = chat({"messages": [user("x")]}, entry_wire="cohere", native_body=native,
                   untranslatable=("documents", "safety_mode"))
    assert orjson.loads(ADAPTER.build_call(request, KEY).body) == {**native, "model": MODEL}


def test_features_another_entry_could_not_carry_are_a_400() -> None:
    error = rejected({"messages": [user()]}, entry_wire="anthropic",
                     native_body={"messages": []}, untranslatable=("thinking",))
    assert error.code == "untranslatable_feature"
    assert error.details == {"feature": "thinking", "features": ["thinking"], "provider": "cohere"}


# -- build_call: messages and parameters -------------------------------------------------------

def test_conversation_with_system_prompts_and_images() -> None:
    body = built({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        user("Hello"),
        {"role": "assistant", "content": "Bonjour", "tool_calls": None, "refusal": None},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}]},
    ]})
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}]},
    ]


def test_tool_calls_results_and_tools() -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    body = built({"messages": [
        user("Weather in Paris?"),
        {"role": "assistant", "content": "I will check.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "ok"}]},
    ], "tools": [strict, CLOCK], "tool_choice": "auto"})
    assert body["messages"][1:] == [
        {"role": "assistant", "tool_plan": "I will check.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "ok"},
    ]
    # Cohere's strictness is one switch for every tool.
    assert body["tools"] == [WEATHER, CLOCK]
    assert body["strict_tools"] is True
    assert "tool_choice" not in body


@pytest.mark.parametrize(("choice", "tool_choice", "names"), [
    ("none", "NONE", ["get_weather", "get_time"]),
    ("required", "REQUIRED", ["get_weather", "get_time"]),
    # Cohere cannot name the tool: only that one is offered, and a call is required.
    ({"type": "function", "function": {"name": "get_time"}}, "REQUIRED", ["get_time"]),
])
def test_tool_choice(choice: Any, tool_choice: str, names: list[str]) -> None:
    body = built({"messages": [user()], "tools": [WEATHER, CLOCK], "tool_choice": choice})
    assert body["tool_choice"] == tool_choice
    assert [t["function"]["name"] for t in body["tools"]] == names
    error = rejected({"messages": [user()], "tools": [WEATHER],
                      "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert error.details == {"field": "tool_choice.function.name"}


def test_parameters() -> None:
    body = built({"messages": [user()], "temperature": 0.2, "top_p": 0.9, "max_tokens": 99,
                  "max_completion_tokens": 50, "stop": "END", "seed": 7, "n": 1,
                  "presence_penalty": 0.5, "frequency_penalty": 0.1,
                  "response_format": {"type": "json_object"}})
    assert {k: v for k, v in body.items() if k not in ("messages", "model", "stream")} == {
        "temperature": 0.2, "p": 0.9, "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": 0.1, "max_tokens": 50, "stop_sequences": ["END"],
        "response_format": {"type": "json_object"}}
    clamped = built({"messages": [user()], "top_p": 1, "stop": ["a", "b"], "max_tokens": 3})
    assert (clamped["p"], clamped["stop_sequences"], clamped["max_tokens"]) == (
        0.99, ["a", "b"], 3)
    assert "response_format" not in built({"messages": [user()],
                                           "response_format": {"type": "text"}})


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = built({"messages": [user()], "response_format": {
        "type": "json_schema", "json_schema": {"name": "out", "schema": schema}}})
    assert body["response_format"] == {"type": "json_object", "json_schema": schema}
    assert rejected({"messages": [user()], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x"}}}).code == "invalid_request"


def test_transport_and_identity_fields_are_ignored() -> None:
    body = built({"messages": [user()], "stream_options": {"include_usage": True},
                  "metadata": {"team": "a"}, "user": "u-1", "safety_identifier": "s",
                  "prompt_cache_key": "k", "store": False, "service_tier": "default",
                  "parallel_tool_calls": True, "logprobs": False, "logit_bias": {},
                  "modalities": ["text"], "temperature": None})
    assert body == {"model": MODEL, "stream": False,
                    "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(("extra", "feature"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ({"modalities": ["audio"]}, "modalities"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"store": True}, "store"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"function_call": "auto"}, "function_call"),
    ({"response_format": {"type": "xml"}}, "response_format.type=xml"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type=custom"),
    ({"tool_choice": {"type": "allowed_tools"}}, 'tool_choice={"type":"allowed_tools"}'),
])
def test_untranslatable_request_fields(extra: dict[str, Any], feature: str) -> None:
    error = rejected({"messages": [user()], **extra})
    assert error.code == "untranslatable_feature"
    assert error.details == {"feature": feature, "features": [feature], "provider": "cohere"}
    assert feature in error.message and "cohere" in error.message


@pytest.mark.parametrize(("message", "feature"), [
    ({"role": "user", "content": "x", "name": "bob"}, "messages[0].name"),
    ({"role": "function", "name": "f", "content": "x"}, "messages[0].role=function"),
    ({"role": "user", "content": [{"type": "input_audio",
                                   "input_audio": {"data": "x", "format": "wav"}}]},
     "messages[0].content[0].type=input_audio"),
    ({"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]},
     "messages[0].content[0].type=file"),
    ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
     "messages[0].content[0].type=image_url"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]},
     "messages[0].tool_calls[0].type=custom"),
])
def test_untranslatable_message_features(message: dict[str, Any], feature: str) -> None:
    error = rejected({"messages": [message]})
    assert error.code == "untranslatable_feature"
    assert error.details["feature"] == feature


# -- answers -----------------------------------------------------------------------------------

USAGE = {"billed_units": {"input_tokens": 30, "output_tokens": 12},
         "tokens": {"input_tokens": 190, "output_tokens": 12}, "cached_tokens": 20}


def test_parse_response_bills_billed_units() -> None:
    body = orjson.dumps({"id": "u1", "finish_reason": "COMPLETE",
                         "message": {"role": "assistant", "content": []}, "usage": USAGE})
    assert ADAPTER.parse_response(body) == (Usage(30, 20, 12), None)
    # cached_tokens counts the unbilled template too: never more than the billed input.
    over = {**USAGE, "cached_tokens": 150}
    assert ADAPTER.parse_response(orjson.dumps({"message": {}, "usage": over}))[0] == Usage(
        30, 30, 12)
    only_tokens = {"tokens": {"input_tokens": 5, "output_tokens": 2}}
    assert ADAPTER.parse_response(orjson.dumps({"message": {}, "usage": only_tokens}))[0] == \
        Usage(5, 0, 2)
    assert ADAPTER.parse_response(b'{"message": {}}') == (NO_USAGE, None)
    for garbage in (b"<html>", b"[]", b'{"choices": []}'):
        with pytest.raises(ValueError):
            ADAPTER.parse_response(garbage)


def test_to_openai_text() -> None:
    body = orjson.dumps({"id": "u1", "finish_reason": "COMPLETE", "usage": USAGE, "message": {
        "role": "assistant", "content": [{"type": "thinking", "thinking": "hmm"},
                                         {"type": "text", "text": "Hello "},
                                         {"type": "text", "text": "there"}]}})
    completion = ADAPTER.to_openai(body, chat({"messages": [user()]}))
    assert completion["id"] == "chatcmpl-u1"
    assert completion["object"] == "chat.completion" and isinstance(completion["created"], int)
    assert completion["model"] == MODEL
    assert completion["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "Hello there"}}]
    assert completion["usage"] == {"prompt_tokens": 30, "completion_tokens": 12,
                                   "total_tokens": 42, "prompt_tokens_details": {
                                       "cached_tokens": 20}}


def test_to_openai_tool_calls() -> None:
    body = orjson.dumps({"id": "u2", "finish_reason": "TOOL_CALL", "message": {
        "role": "assistant", "tool_plan": "I will look it up.", "tool_calls": [
            {"id": "get_weather_x1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}})
    choice = ADAPTER.to_openai(body, chat({"messages": [user()]}))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "get_weather_x1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}


@pytest.mark.parametrize(("reason", "finish"), [
    ("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length"),
    ("TOOL_CALL", "tool_calls"), ("ERROR", "length"), ("TIMEOUT", "length"),
    ("SOMETHING_NEW", "stop"), (None, "stop")])
def test_finish_reasons(reason: str | None, finish: str) -> None:
    body = orjson.dumps({"finish_reason": reason,
                         "message": {"content": [{"type": "text", "text": "x"}]}})
    assert ADAPTER.to_openai(body, chat({"messages": [user()]}))["choices"][0][
        "finish_reason"] == finish


# -- streaming ---------------------------------------------------------------------------------

def deltas(chunks: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each chunk as (delta, finish_reason), or ("usage", usage) for the usage chunk."""
    out: list[tuple[Any, ...]] = []
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == MODEL
        if not chunk["choices"]:
            out.append(("usage", chunk["usage"]))
        for choice in chunk["choices"]:
            assert choice["index"] == 0
            out.append((choice["delta"], choice["finish_reason"]))
    return out


def named(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, **fields}


def test_stream_text_event_by_event() -> None:
    translator = ADAPTER.stream_translator(chat({"messages": [user()]}, stream=True))
    feed = translator.feed
    start = feed(*named("message-start", id="m1", delta={"message": {"role": "assistant"}}))
    assert deltas(start) == [({"role": "assistant", "content": ""}, None)]
    assert start[0]["id"] == "chatcmpl-m1"
    assert feed(*named("content-start", index=0, delta={"message": {
        "content": {"type": "text", "text": ""}}})) == []
    assert deltas(feed(*named("content-delta", index=0, delta={"message": {
        "content": {"text": "Hel"}}}))) == [({"content": "Hel"}, None)]
    assert feed(*named("content-delta", index=0, delta={"message": {
        "content": {"thinking": "hmm"}}})) == []
    assert deltas(feed(*named("content-delta", index=0, delta={"message": {
        "content": {"text": "lo"}}}))) == [({"content": "lo"}, None)]
    assert feed(*named("content-end", index=0)) == []
    assert translator.usage == NO_USAGE
    end = feed(*named("message-end", delta={"finish_reason": "MAX_TOKENS", "usage": USAGE}))
    assert deltas(end) == [({}, "length"), ("usage", {
        "prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 20}})]
    assert all(c["id"] == "chatcmpl-m1" for c in start + end)
    assert translator.usage == Usage(30, 20, 12)
    assert translator.model is None
    assert feed(None, "[DONE]") == [] and translator.close() == []


def test_stream_tool_calls_event_by_event() -> None:
    translator = ADAPTER.stream_translator(chat({"messages": [user()]}, stream=True))
    events = [
        named("message-start", id="m2", delta={"message": {"role": "assistant"}}),
        named("tool-plan-delta", delta={"message": {"tool_plan": "I will check."}}),
        named("tool-call-start", index=0, delta={"message": {"tool_calls": {
            "id": "get_weather_a", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}}}),
        named("tool-call-delta", index=0, delta={"message": {"tool_calls": {
            "function": {"arguments": '{"city":'}}}}),
        named("tool-call-delta", index=0, delta={"message": {"tool_calls": {
            "function": {"arguments": '"Paris"}'}}}}),
        named("tool-call-end", index=0),
        named("tool-call-start", index=1, delta={"message": {"tool_calls": {
            "id": "get_time_b", "type": "function",
            "function": {"name": "get_time", "arguments": "{}"}}}}),
        named("tool-call-end", index=1),
        named("message-end", delta={"finish_reason": "TOOL_CALL"}),
    ]
    seen = [deltas(translator.feed(kind, data)) for kind, data in events]
    assert seen == [
        [({"role": "assistant", "content": ""}, None)],
        [],  # the tool plan is the model's reasoning, not reply content
        [({"tool_calls": [{"index": 0, "id": "get_weather_a", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}, None)],
        [({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}, None)],
        [({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, None)],
        [],
        [({"tool_calls": [{"index": 1, "id": "get_time_b", "type": "function",
                           "function": {"name": "get_time", "arguments": "{}"}}]}, None)],
        [],
        [({}, "tool_calls")],  # no usage reported: no usage chunk
    ]
    assert translator.usage == NO_USAGE


def test_stream_usage_fast_path() -> None:
    assert ADAPTER.stream_usage({"type": "content-delta", "delta": {"message": {}}}) is None
    end = {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": USAGE}}
    assert ADAPTER.stream_usage(end) == Usage(30, 20, 12)


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (422, "invalid_request_error"), (429, "rate_limit_error"),
    (498, "invalid_request_error"), (500, "api_error")])
def test_map_error(status: int, kind: str) -> None:
    mapped = ADAPTER.map_error(status, b'{"id": "e1", "message": "invalid api token"}',
                               {"retry-after": "2", "x-trial-endpoint-call-limit": "40"})
    assert mapped.status == status and mapped.openai_type == kind
    assert mapped.message == f"cohere upstream error {status}: invalid api token"
    assert mapped.headers == {"retry-after": "2"}
    assert mapped.details == {"provider": "cohere", "upstream_status": status,
                              "upstream_error": {"id": "e1", "message": "invalid api token"}}


def test_map_error_odd_bodies() -> None:
    plain = ADAPTER.map_error(502, b"<html>bad gateway</html>", {})
    assert plain.message == "cohere upstream error 502: <html>bad gateway</html>"
    assert plain.details["upstream_error"] is None
    assert ADAPTER.map_error(500, b"", {}).message.endswith("upstream answered 500")


# -- against the fake upstream -----------------------------------------------------------------

async def send(fake: FakeUpstream, request: ChatRequest,
               *behaviours: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    fake.script(*behaviours)
    call = ADAPTER.build_call(request, Credential("fake", "ck", fake.url.removesuffix("/v1")))
    async with aiohttp.ClientSession() as session, \
            session.post(call.url, data=call.body, headers=call.headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """Each SSE event as (event name, parsed data), `[DONE]` left out as the gateway does."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if data and data != [b"[DONE]"]:
            events.append((name, orjson.loads(b"\n".join(data))))
    return events


async def test_fake_accepts_text_and_images(fake_upstream: FakeUpstream) -> None:
    request = chat({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": PNG}}]}],
        "max_completion_tokens": 5, "stop": ["w4"]})
    status, _, body = await send(fake_upstream, request, {"cached_tokens": 3})
    assert status == 200, body
    completion = ADAPTER.to_openai(body, request)
    assert completion["choices"][0]["message"]["content"] == "w1 w2 w3"
    assert completion["choices"][0]["finish_reason"] == "stop"
    billed = count_billed_input_tokens(fake_upstream.state.log[-1]["body"]["messages"])
    assert ADAPTER.parse_response(body) == (Usage(billed, 3, 3), None)


async def test_fake_tool_call_round_trip(fake_upstream: FakeUpstream) -> None:
    ask = chat({"messages": [user("Please use tool for Paris")], "tools": [WEATHER]})
    status, _, body = await send(fake_upstream, ask)
    assert status == 200, body
    choice = ADAPTER.to_openai(body, ask)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"fake"}'}
    follow = chat({"messages": [user("Please use tool for Paris"), choice["message"],
                                {"role": "tool", "tool_call_id": call["id"], "content": "21C"}],
                   "tools": [WEATHER], "tool_choice": "none"})
    status, _, body = await send(fake_upstream, follow)
    assert status == 200, body
    assert ADAPTER.to_openai(body, follow)["choices"][0]["message"]["content"] == DEFAULT_REPLY
    sent = fake_upstream.state.log[-1]["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"]
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "content": "21C"}


async def test_fake_stream_event_by_event(fake_upstream: FakeUpstream) -> None:
    request = chat({"messages": [user("Say hello")]}, stream=True)
    status, headers, raw = await send(fake_upstream, request, {"cached_tokens": 2})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    translator = ADAPTER.stream_translator(request)
    events = sse_events(raw)
    assert [name for name, _ in events] == ["message-start", "content-start",
                                            *["content-delta"] * 12, "content-end",
                                            "message-end"]
    seen = deltas([c for name, data in events for c in translator.feed(name, data)])
    seen += deltas(translator.close())
    assert seen[0] == ({"role": "assistant", "content": ""}, None)
    assert "".join(d.get("content", "") for d, _ in seen[1:-2]) == DEFAULT_REPLY
    assert seen[-2] == ({}, "stop")
    billed = count_billed_input_tokens(fake_upstream.state.log[-1]["body"]["messages"])
    assert seen[-1] == ("usage", {"prompt_tokens": billed, "completion_tokens": 12,
                                  "total_tokens": billed + 12,
                                  "prompt_tokens_details": {"cached_tokens": 2}})
    assert translator.usage == Usage(billed, 2, 12)


async def test_fake_stream_tool_call(fake_upstream: FakeUpstream) -> None:
    request = chat({"messages": [user("x")], "tools": [WEATHER], "tool_choice": "required"},
                   stream=True)
    status, _, raw = await send(fake_upstream, request)
    assert status == 200, raw
    translator = ADAPTER.stream_translator(request)
    seen = deltas([c for name, data in sse_events(raw) for c in translator.feed(name, data)])
    calls = [d["tool_calls"][0] for d, _ in seen if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["id"].startswith("get_weather_fake_")
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"fake"}'
    assert len(calls) == 1 + len(json_token_pieces({"city": "fake"}))
    assert seen[-2] == ({}, "tool_calls")
    assert translator.usage.output_tokens == len(json_token_pieces({"city": "fake"}))


async def test_fake_error_is_mapped(fake_upstream: FakeUpstream) -> None:
    status, headers, body = await send(fake_upstream, chat({"messages": [user()]}),
                                       {"status": 429, "retry_after": 3})
    error = ADAPTER.map_error(status, body, headers)
    assert (error.status, error.openai_type, error.headers) == (429, "rate_limit_error",
                                                                {"Retry-After": "3"})
    assert error.message == "cohere upstream error 429: Rate limit reached (fake)."
