"""The Gemini adapter: OpenAI-shaped requests to generateContent bodies and Gemini's answers
(JSON, SSE, errors) back to OpenAI's shape, checked directly and against the fake upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from conftest import FakeUpstream

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadRequest
from gateway.providers.base import Credential
from gateway.providers.gemini import GeminiAdapter
from gateway.settings import ProviderSettings
from gateway.testing.fake_gemini import count_prompt_tokens
from tests.testing.fake_wire import DEFAULT_REPLY

HOST = "https://generativelanguage.googleapis.com"
ADAPTER = GeminiAdapter(ProviderSettings(kind="gemini", base_url=HOST))
KEY = Credential("main", "gk-secret", HOST)
MODEL = "gemini-2.5-flash"
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


def chat(body: dict[str, Any], *, stream: bool = False, **extra: Any) -> ChatRequest:
    body = {"model": MODEL, **body}
    return ChatRequest(entry="openai", provider="gemini", model=body["model"], body=body,
                       stream=stream, include_usage=False, max_output_tokens=None, **extra)


def built(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The generateContent body built for an OpenAI-shaped body."""
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
    call = ADAPTER.build_call(chat({"model": "models/gemini-2.0-flash",
                                    "messages": [user()]}), KEY)
    assert call.url == f"{HOST}/v1beta/models/gemini-2.0-flash:generateContent"
    assert call.headers == {"Content-Type": "application/json", "x-goog-api-key": "gk-secret"}
    streamed = ADAPTER.build_call(chat({"messages": [user()]}, stream=True),
                                  Credential("c", "k", HOST + "/"))
    assert streamed.url == f"{HOST}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"


def test_missing_key_on_google_is_a_400() -> None:
    with pytest.raises(BadRequest) as caught:
        ADAPTER.build_call(chat({"messages": [user()]}), Credential("c", "", HOST))
    assert caught.value.code == "missing_provider_credential"
    assert "GEMINI_API_KEY" in caught.value.message


def test_no_key_elsewhere_sends_no_key() -> None:
    call = ADAPTER.build_call(chat({"messages": [user()]}), Credential("c", "", "http://local"))
    assert "x-goog-api-key" not in call.headers
    assert call.url.startswith("http://local/v1beta/models/")


def test_native_gemini_body_passes_through() -> None:
    native = {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
              "cachedContent": "cachedContents/abc"}
    request = chat({"messages": [user("x")]}, entry_wire="gemini", native_body=native,
                   untranslatable=("cachedContent",))
    assert orjson.loads(ADAPTER.build_call(request, KEY).body) == native


def test_features_another_entry_could_not_carry_are_a_400() -> None:
    error = rejected({"messages": [user()]}, entry_wire="anthropic",
                     native_body={"messages": []}, untranslatable=("thinking",))
    assert error.code == "untranslatable_feature"
    assert error.details == {"feature": "thinking", "features": ["thinking"], "provider": "gemini"}


# -- build_call: messages ----------------------------------------------------------------------

def test_conversation_with_system_prompts_images_and_merged_turns() -> None:
    body = built({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour", "refusal": None, "tool_calls": None},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/cat.JPG?s=1"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/render"}}]},
        {"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBER"}}]},
    ]})
    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use French."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Bonjour"}]},
            {"role": "user", "parts": [
                {"text": "What is this?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/cat.JPG?s=1"}},
                {"fileData": {"fileUri": "https://x.test/render"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGR"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBER"}}]},
        ],
    }


def test_tool_calls_and_results_become_function_parts() -> None:
    body = built({"messages": [
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "noon"}]},
        user("Thanks"),
    ], "tools": [WEATHER], "tool_choice": "auto"})
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "model", "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
             "thoughtSignature": "skip_thought_signature_validator"},
            {"functionCall": {"name": "get_time", "args": {}},
             "thoughtSignature": "skip_thought_signature_validator"}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"content": {"temp": 21}}}},
            {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
            {"text": "Thanks"}]},
    ]
    assert body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather for a city",
        "parametersJsonSchema": WEATHER["function"]["parameters"]}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


@pytest.mark.parametrize(("choice", "config"), [
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
])
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    body = built({"messages": [user()], "tools": [WEATHER], "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_generation_config() -> None:
    body = built({"messages": [user()], "temperature": 0.2, "top_p": 0.9, "max_tokens": 99,
                  "max_completion_tokens": 50, "stop": "END", "n": 2, "presence_penalty": 0.5,
                  "frequency_penalty": -0.5, "seed": 7, "reasoning_effort": "low",
                  "response_format": {"type": "json_object"}})
    assert body["generationConfig"] == {
        "temperature": 0.2, "topP": 0.9, "candidateCount": 2, "presencePenalty": 0.5,
        "frequencyPenalty": -0.5, "seed": 7, "maxOutputTokens": 50, "stopSequences": ["END"],
        "responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 1024}}
    assert built({"messages": [user()], "max_tokens": 9, "stop": ["a", "b"]})[
        "generationConfig"] == {"maxOutputTokens": 9, "stopSequences": ["a", "b"]}
    assert "generationConfig" not in built({"messages": [user()],
                                            "response_format": {"type": "text"}})


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}},
              "$defs": {"x": {"type": "integer"}}}
    body = built({"messages": [user()], "response_format": {
        "type": "json_schema", "json_schema": {"name": "out", "strict": True, "schema": schema}}})
    assert body["generationConfig"] == {"responseMimeType": "application/json",
                                        "responseJsonSchema": schema}
    error = rejected({"messages": [user()], "response_format": {"type": "json_schema"}})
    assert error.code == "invalid_request"


def test_transport_and_identity_fields_are_ignored() -> None:
    body = built({"messages": [user()], "stream_options": {"include_usage": True},
                  "metadata": {"team": "a"}, "user": "u-1", "safety_identifier": "s",
                  "prompt_cache_key": "k", "store": False, "service_tier": "auto",
                  "parallel_tool_calls": True, "logprobs": False, "logit_bias": {},
                  "modalities": ["text"], "top_logprobs": None})
    assert body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


@pytest.mark.parametrize(("extra", "feature"), [
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"store": True}, "store"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"verbosity": "low"}, "verbosity"),
    ({"reasoning_effort": "minimal"}, "reasoning_effort=minimal"),
    ({"response_format": {"type": "xml"}}, "response_format.type=xml"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type=custom"),
    ({"tool_choice": {"type": "allowed_tools"}}, 'tool_choice={"type":"allowed_tools"}'),
])
def test_untranslatable_request_fields(extra: dict[str, Any], feature: str) -> None:
    error = rejected({"messages": [user()], **extra})
    assert error.code == "untranslatable_feature"
    assert error.details == {"feature": feature, "features": [feature], "provider": "gemini"}
    assert feature in error.message and "gemini" in error.message


@pytest.mark.parametrize(("message", "feature"), [
    ({"role": "user", "content": "x", "name": "bob"}, "messages[0].name"),
    ({"role": "function", "name": "f", "content": "x"}, "messages[0].role=function"),
    ({"role": "assistant", "content": "x", "audio": {"id": "a"}}, "messages[0].audio"),
    ({"role": "user", "content": [{"type": "input_audio",
                                   "input_audio": {"data": "x", "format": "flac"}}]},
     "messages[0].content[0].input_audio.format=flac"),
    ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
     "messages[0].content[0].type=image_url"),
    ({"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
     "messages[0].content[0].type=file"),
])
def test_untranslatable_message_features(message: dict[str, Any], feature: str) -> None:
    error = rejected({"messages": [message]})
    assert error.code == "untranslatable_feature"
    assert error.details["feature"] == feature


@pytest.mark.parametrize(("messages", "field"), [
    ([{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}],
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}],
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "tool", "tool_call_id": "nobody", "content": "x"}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": [{"type": "image_url",
                                    "image_url": {"url": "ftp://x.test/a.png"}}]}],
     "messages[0].content[0].image_url.url"),
    ([{"role": "user", "content": [{"type": "image_url",
                                    "image_url": {"url": "data:image/png,raw"}}]}],
     "messages[0].content[0].image_url.url"),
])
def test_invalid_messages(messages: list[dict[str, Any]], field: str) -> None:
    error = rejected({"messages": messages})
    assert error.code == "invalid_request"
    assert error.details == {"field": field}


# -- answers -----------------------------------------------------------------------------------

USAGE_META = {"promptTokenCount": 100, "cachedContentTokenCount": 40,
              "candidatesTokenCount": 20, "thoughtsTokenCount": 7, "toolUsePromptTokenCount": 3,
              "totalTokenCount": 130}


def test_parse_response_usage_and_model() -> None:
    body = orjson.dumps({"candidates": [], "usageMetadata": USAGE_META,
                         "modelVersion": "gemini-2.5-flash-001"})
    usage, model = ADAPTER.parse_response(body)
    assert usage == Usage(input_tokens=103, cached_input_tokens=40, output_tokens=27)
    assert model == "gemini-2.5-flash-001"
    assert ADAPTER.parse_response(b'{"candidates": []}') == (NO_USAGE, None)
    for garbage in (b"<html>", b"[]", b'{"choices": []}'):
        with pytest.raises(ValueError):
            ADAPTER.parse_response(garbage)


def test_to_openai_text_thoughts_and_usage() -> None:
    body = orjson.dumps({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think", "thought": True}, {"text": "Hello "}, {"text": "there"}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": USAGE_META, "modelVersion": "gemini-2.5-flash-001", "responseId": "r1"})
    completion = ADAPTER.to_openai(body, chat({"messages": [user()]}))
    assert completion["id"] == "chatcmpl-r1"
    assert completion["object"] == "chat.completion"
    assert isinstance(completion["created"], int)
    assert completion["model"] == "gemini-2.5-flash-001"
    assert completion["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "Hello there"}}]
    assert completion["usage"] == {
        "prompt_tokens": 103, "completion_tokens": 27, "total_tokens": 130,
        "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 7}}


def test_to_openai_function_calls_and_candidates() -> None:
    body = orjson.dumps({"candidates": [
        {"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
             "thoughtSignature": "c2ln"},
            {"functionCall": {"name": "get_time", "args": {}}}]},
         "finishReason": "STOP", "index": 0},
        {"content": {"role": "model", "parts": [{"text": "cut"}]},
         "finishReason": "MAX_TOKENS", "index": 1},
        {"finishReason": "SAFETY", "index": 2},
        {"content": {"parts": [{"text": "odd"}]}, "finishReason": "OTHER", "index": 3},
    ]})
    choices = ADAPTER.to_openai(body, chat({"messages": [user()]}))["choices"]
    assert choices[0]["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]}
    assert [c["finish_reason"] for c in choices] == ["tool_calls", "length", "content_filter",
                                                     "stop"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[2]["message"]["content"] == ""


def test_to_openai_blocked_prompt() -> None:
    body = orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"},
                         "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}})
    completion = ADAPTER.to_openai(body, chat({"messages": [user()]}))
    assert completion["model"] == MODEL
    assert completion["choices"] == [{"index": 0, "logprobs": None,
                                      "finish_reason": "content_filter",
                                      "message": {"role": "assistant", "content": ""}}]
    assert completion["usage"]["prompt_tokens"] == 9


# -- streaming ---------------------------------------------------------------------------------

def deltas(chunks: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each chunk as (index, delta, finish_reason), or ("usage", usage) for the usage chunk."""
    out: list[tuple[Any, ...]] = []
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if not chunk["choices"]:
            out.append(("usage", chunk["usage"]))
        for choice in chunk["choices"]:
            out.append((choice["index"], choice["delta"], choice["finish_reason"]))
    return out


def event(parts: list[dict[str, Any]], finish: str | None = None, **meta: int) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 10, **meta},
            "modelVersion": "gemini-2.5-flash-001", "responseId": "r9"}


def test_stream_text_event_by_event_with_running_usage() -> None:
    translator = ADAPTER.stream_translator(chat({"messages": [user()]}, stream=True))
    first = translator.feed(None, event([{"text": "Hel"}], candidatesTokenCount=1))
    assert deltas(first) == [(0, {"role": "assistant", "content": ""}, None),
                             (0, {"content": "Hel"}, None)]
    assert first[0]["id"] == "chatcmpl-r9" and first[0]["model"] == "gemini-2.5-flash-001"
    # Until a candidate finishes the output count is not final: the gateway must count it.
    assert translator.usage == Usage(10, 0, 1, output_source="none")
    second = translator.feed(None, event([{"text": "thinking", "thought": True},
                                          {"text": "lo"}], candidatesTokenCount=2))
    assert deltas(second) == [(0, {"content": "lo"}, None)]
    last = translator.feed(None, event([{"text": ""}], "STOP", candidatesTokenCount=3,
                                       thoughtsTokenCount=4, cachedContentTokenCount=6))
    assert deltas(last) == [(0, {}, "stop")]
    # Running totals: the last report replaces the earlier ones, never adds to them.
    assert translator.usage == Usage(10, 6, 7)
    assert translator.model == "gemini-2.5-flash-001"
    assert deltas(translator.close()) == [("usage", {
        "prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 6},
        "completion_tokens_details": {"reasoning_tokens": 4}})]
    assert translator.close() == []


def test_stream_function_calls() -> None:
    translator = ADAPTER.stream_translator(chat({"messages": [user()]}, stream=True))
    chunks = translator.feed(None, event([
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {}}}], "STOP", candidatesTokenCount=5))
    assert deltas(chunks) == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"tool_calls": [{"index": 0, "id": "call_0", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris"}'}}]}, None),
        (0, {"tool_calls": [{"index": 1, "id": "call_1", "type": "function", "function": {
            "name": "get_time", "arguments": "{}"}}]}, None),
        (0, {}, "tool_calls"),
    ]


def test_stream_blocked_prompt_and_unfinished_end() -> None:
    blocked = ADAPTER.stream_translator(chat({"messages": [user()]}, stream=True))
    chunks = blocked.feed(None, {"promptFeedback": {"blockReason": "OTHER"},
                                 "usageMetadata": {"promptTokenCount": 4}})
    assert deltas(chunks) == [(0, {"role": "assistant", "content": ""}, None),
                              (0, {}, "content_filter")]
    assert blocked.usage == Usage(4, 0, 0)
    assert deltas(blocked.close())[0][0] == "usage"

    ended = ADAPTER.stream_translator(chat({"messages": [user()]}, stream=True))
    ended.feed(None, event([{"text": "a"}]))
    assert ended.feed(None, "not an event") == []
    # A stream that ends without a finish reason: "stop" is owed, the usage is not final.
    assert deltas(ended.close()) == [(0, {}, "stop")]
    assert ended.usage.output_source == "none"


def test_stream_usage_fast_path() -> None:
    assert ADAPTER.stream_usage({"candidates": []}) is None
    assert ADAPTER.stream_usage(event([], candidatesTokenCount=2)) == Usage(
        10, 0, 2, output_source="none")
    assert ADAPTER.stream_usage(event([], "STOP", candidatesTokenCount=2)) == Usage(10, 0, 2)


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (429, "rate_limit_error"), (409, "invalid_request_error"),
    (500, "api_error"), (503, "api_error")])
def test_map_error(status: int, kind: str) -> None:
    error = {"code": status, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}
    mapped = ADAPTER.map_error(status, orjson.dumps({"error": error}),
                               {"Retry-After": "7", "X-Goog-Trace": "t", "Set-Cookie": "s"})
    assert mapped.status == status
    assert mapped.openai_type == kind
    assert mapped.message == f"gemini upstream error {status}: Quota exceeded"
    assert mapped.headers == {"Retry-After": "7"}
    assert mapped.details == {"provider": "gemini", "upstream_status": status,
                              "upstream_error": error}


def test_map_error_odd_bodies() -> None:
    listed = ADAPTER.map_error(400, b'[{"error": {"code": 400, "message": "bad"}}]', {})
    assert listed.message == "gemini upstream error 400: bad"
    plain = ADAPTER.map_error(502, b"<html>bad gateway</html>", {})
    assert plain.message == "gemini upstream error 502: <html>bad gateway</html>"
    assert plain.details["upstream_error"] is None
    assert ADAPTER.map_error(500, b"", {}).message.endswith("upstream answered 500")


# -- against the fake upstream -----------------------------------------------------------------

async def send(fake: FakeUpstream, request: ChatRequest,
               *behaviours: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    fake.script(*behaviours)
    call = ADAPTER.build_call(request, Credential("fake", "gk", fake.url.removesuffix("/v1")))
    async with aiohttp.ClientSession() as session, \
            session.post(call.url, data=call.body, headers=call.headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def sse_events(raw: bytes) -> list[Any]:
    """The parsed `data:` of each SSE event, as the gateway hands them to the translator."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(orjson.loads(b"\n".join(data)))
    return events


async def test_fake_accepts_text_and_images(fake_upstream: FakeUpstream) -> None:
    request = chat({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": PNG}},
            {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}]}],
        "max_completion_tokens": 5})
    status, _, body = await send(fake_upstream, request, {"cached_tokens": 2})
    assert status == 200, body
    sent = fake_upstream.state.log[-1]["body"]
    completion = ADAPTER.to_openai(body, request)
    assert completion["choices"][0]["message"]["content"] == "w1 w2 w3 w4 w5"
    assert completion["choices"][0]["finish_reason"] == "length"
    prompt = count_prompt_tokens(sent)
    assert ADAPTER.parse_response(body) == (Usage(prompt, 2, 5), MODEL)


async def test_fake_tool_call_round_trip(fake_upstream: FakeUpstream) -> None:
    ask = chat({"messages": [user("Please use tool for Paris")], "tools": [WEATHER]})
    status, _, body = await send(fake_upstream, ask)
    assert status == 200, body
    message = ADAPTER.to_openai(body, ask)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    call = message["message"]["tool_calls"][0]
    assert call["id"] == "call_0" and call["function"]["name"] == "get_weather"
    # The tool result goes back with the function's name, and the fake answers in text.
    follow = chat({"messages": [user("Please use tool for Paris"), message["message"],
                                {"role": "tool", "tool_call_id": "call_0", "content": "21C"}],
                   "tools": [WEATHER], "tool_choice": "none"})
    status, _, body = await send(fake_upstream, follow)
    assert status == 200, body
    assert ADAPTER.to_openai(body, follow)["choices"][0]["message"]["content"] == DEFAULT_REPLY


async def test_fake_stream_event_by_event(fake_upstream: FakeUpstream) -> None:
    request = chat({"messages": [user("Say hello")]}, stream=True)
    status, headers, raw = await send(fake_upstream, request, {"cached_tokens": 1})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    translator = ADAPTER.stream_translator(request)
    chunks: list[dict[str, Any]] = []
    events = sse_events(raw)
    assert len(events) == 13
    for data in events:
        chunks.extend(translator.feed(None, data))
    chunks.extend(translator.close())
    seen = deltas(chunks)
    assert seen[0] == (0, {"role": "assistant", "content": ""}, None)
    assert "".join(d.get("content", "") for _, d, _ in seen[1:-2]) == DEFAULT_REPLY
    assert seen[-2] == (0, {}, "stop")
    prompt = count_prompt_tokens(fake_upstream.state.log[-1]["body"])
    assert seen[-1] == ("usage", {"prompt_tokens": prompt, "completion_tokens": 12,
                                  "total_tokens": prompt + 12,
                                  "prompt_tokens_details": {"cached_tokens": 1},
                                  "completion_tokens_details": {"reasoning_tokens": 0}})
    assert translator.usage == Usage(prompt, 1, 12)


async def test_fake_stream_tool_call(fake_upstream: FakeUpstream) -> None:
    request = chat({"messages": [user("x")], "tools": [WEATHER], "tool_choice": "required"},
                   stream=True)
    status, _, raw = await send(fake_upstream, request)
    assert status == 200, raw
    translator = ADAPTER.stream_translator(request)
    chunks = [c for data in sse_events(raw) for c in translator.feed(None, data)]
    calls = [d["tool_calls"][0] for _, d, _ in deltas(chunks) if "tool_calls" in d]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [
        (0, "call_0", "get_weather")]
    assert deltas(chunks)[-1] == (0, {}, "tool_calls")


async def test_fake_error_is_mapped(fake_upstream: FakeUpstream) -> None:
    status, headers, body = await send(fake_upstream, chat({"messages": [user()]}),
                                       {"status": 429, "retry_after": 3})
    error = ADAPTER.map_error(status, body, headers)
    assert (error.status, error.openai_type, error.headers) == (429, "rate_limit_error",
                                                                {"Retry-After": "3"})
    assert "Rate limit reached" in error.message
