"""Meter stage and the OpenAI adapter: SSE usage metering, body usage, upstream calls, errors."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadGateway, BadRequest, UpstreamStatusError
from gateway.pipeline.meter import DONE, StreamMeter, usage_from_body
from gateway.providers import configured_credentials
from gateway.providers.openai import OpenAIAdapter
from gateway.settings import ProviderSettings

MODEL = "gpt-4o-mini-2024-07-18"
LOCAL = ProviderSettings(base_url="http://127.0.0.1:9/v1", api_key="")
ADAPTER = OpenAIAdapter(LOCAL)
CREDENTIAL = configured_credentials(LOCAL)[0]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_700_000_000,
             "model": MODEL, "system_fingerprint": "fp_0ba0d124f1",
             "choices": [{"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": finish}],
             "usage": None}
    return b"data: " + orjson.dumps(event) + b"\n\n"


USAGE_EVENT = b"data: " + orjson.dumps({
    "id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_700_000_000,
    "model": MODEL, "system_fingerprint": "fp_0ba0d124f1", "choices": [],
    "usage": {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0,
                                            "rejected_prediction_tokens": 0}},
}) + b"\n\n"
CONTENT_EVENTS = [
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Hello"}),
    _chunk({"content": ", w\u00f6rld \U0001f642 \u2713"}),  # multi-byte UTF-8 to split
    _chunk({"content": ' said "usage":{"x":1}'}),  # escaped in JSON: not a usage event
    _chunk({}, finish="stop"),
]
STREAM = b"".join(CONTENT_EVENTS) + USAGE_EVENT + DONE
EXPECTED_USAGE = Usage(input_tokens=1234, cached_input_tokens=1024, output_tokens=56)


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _run(meter: StreamMeter, data: bytes, size: int) -> bytes:
    out = b"".join(meter.feed(piece) for piece in _pieces(data, size))
    return out + meter.flush()


SIZES = [1, 7, 64, len(STREAM)]


# -- StreamMeter -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_usage_event_removed_when_not_asked(size: int) -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    out = _run(meter, STREAM, size)
    assert out == b"".join(CONTENT_EVENTS)  # byte for byte, minus usage event and [DONE]
    assert meter.usage == EXPECTED_USAGE
    assert meter.usage.source == "provider"
    assert meter.done is True
    assert meter.model == MODEL
    assert meter.events == len(CONTENT_EVENTS) + 2


@pytest.mark.parametrize("size", SIZES)
def test_usage_event_kept_when_asked(size: int) -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=True)
    out = _run(meter, STREAM, size)
    assert out == b"".join(CONTENT_EVENTS) + USAGE_EVENT
    assert DONE not in out
    assert meter.usage == EXPECTED_USAGE
    assert meter.done is True


@pytest.mark.parametrize("size", SIZES)
def test_crlf_line_ends_are_understood(size: int) -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    out = _run(meter, STREAM.replace(b"\n", b"\r\n"), size)
    assert out == b"".join(CONTENT_EVENTS)
    assert meter.usage == EXPECTED_USAGE and meter.done is True


def test_done_is_held_back_until_it_arrives() -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    assert meter.feed(b"".join(CONTENT_EVENTS)) == b"".join(CONTENT_EVENTS)
    assert meter.done is False
    assert meter.usage == NO_USAGE
    assert meter.feed(USAGE_EVENT) == b""
    assert meter.usage == EXPECTED_USAGE
    assert meter.feed(b"data: [DO") == b""
    assert meter.done is False
    assert meter.feed(b"NE]\n\n") == b""
    assert meter.done is True
    assert meter.flush() == b""


def test_incomplete_event_waits_and_flush_returns_the_rest() -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    first = CONTENT_EVENTS[0]
    assert meter.feed(first[:-1]) == b""  # no blank line yet: nothing is passed on
    assert meter.model is None
    assert meter.feed(first[-1:]) == first
    assert meter.model == MODEL
    assert meter.feed(b"data: {\"partial\": tr") == b""
    assert meter.flush() == b"data: {\"partial\": tr"
    assert meter.flush() == b""


def test_usage_event_with_choices_is_kept() -> None:
    # a usage event that still carries choices is content, never dropped
    event = _chunk({"content": "!"}).replace(
        b'"usage":null', b'"usage":{"prompt_tokens":3,"completion_tokens":1}')
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    assert meter.feed(CONTENT_EVENTS[0] + event + DONE) == CONTENT_EVENTS[0] + event
    assert meter.usage == Usage(3, 0, 1)


def test_model_taken_from_first_event() -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    later = _chunk({"content": "x"}).replace(MODEL.encode(), b"other-model")
    meter.feed(CONTENT_EVENTS[0])
    meter.feed(later)
    assert meter.model == MODEL


@pytest.mark.parametrize("first", [
    b"data: {not json\n\n",
    b"<html>502 Bad Gateway</html>\n\n",
    b"data: \n\n",
])
def test_invalid_first_event_is_bad_gateway(first: bytes) -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    with pytest.raises(BadGateway) as info:
        meter.feed(first + CONTENT_EVENTS[0])
    assert info.value.status == 502
    assert info.value.code == "upstream_invalid_response"
    assert info.value.details["provider"] == "openai"
    assert info.value.details["body_start"] == first[:-2].decode()


def test_invalid_later_event_passes_through() -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    data = CONTENT_EVENTS[0] + b"data: {oops\n\n"
    assert meter.feed(data) == data


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_leading_keep_alive_comment_is_accepted(size: int) -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    out = _run(meter, b": keep-alive\n\n" + STREAM, size)
    assert out == b": keep-alive\n\n" + b"".join(CONTENT_EVENTS)
    assert meter.usage == EXPECTED_USAGE
    assert meter.done is True


def test_model_taken_from_first_data_event_after_comment() -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    _run(meter, b": keep-alive\n\n" + STREAM, 7)
    assert meter.model == MODEL


def test_invalid_first_data_event_after_comment_is_bad_gateway() -> None:
    meter = StreamMeter(ADAPTER, keep_usage_event=False)
    with pytest.raises(BadGateway):
        meter.feed(b": keep-alive\n\ndata: {not json\n\n")


# -- usage_from_body ---------------------------------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-xyz", "object": "chat.completion", "created": 1_700_000_000,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
              "prompt_tokens_details": {"cached_tokens": 1024}},
}


@pytest.mark.parametrize(("patch", "usage", "model"), [
    ({}, EXPECTED_USAGE, MODEL),
    ({"usage": {"prompt_tokens": 10, "completion_tokens": 2}}, Usage(10, 0, 2), MODEL),
    ({"usage": {"prompt_tokens": 10, "completion_tokens": 2,
                "prompt_tokens_details": None}}, Usage(10, 0, 2), MODEL),
    ({"usage": {"prompt_tokens": 10, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": None}}}, Usage(10, 0, 2), MODEL),
    ({"usage": {"prompt_tokens": -5, "completion_tokens": True}}, Usage(0, 0, 0), MODEL),
    ({"usage": None}, NO_USAGE, MODEL),
    ({"model": 5}, EXPECTED_USAGE, None),
])
def test_usage_from_body(patch: dict[str, Any], usage: Usage, model: str | None) -> None:
    body = orjson.dumps({**COMPLETION, **patch})
    assert usage_from_body(ADAPTER, body) == (usage, model)


def test_cached_tokens_parsed() -> None:
    got, _ = usage_from_body(ADAPTER, orjson.dumps(COMPLETION))
    assert got.cached_input_tokens == 1024
    assert got.input_tokens == 1234
    assert got.output_tokens == 56


@pytest.mark.parametrize("body", [
    b"garbage", b"", b"<html>oops</html>", b"[]", b'"x"',
    orjson.dumps({"id": "x", "usage": {"prompt_tokens": 1}}),  # no choices
    orjson.dumps({**COMPLETION, "choices": None}),
])
def test_usage_from_unusable_body_is_bad_gateway(body: bytes) -> None:
    with pytest.raises(BadGateway) as info:
        usage_from_body(ADAPTER, body)
    assert info.value.status == 502
    assert info.value.code == "upstream_invalid_response"
    assert info.value.details["body_start"] == body[:200].decode()


# -- OpenAIAdapter.build_call ------------------------------------------------------------------

def _chat(body: dict[str, Any], stream: bool) -> ChatRequest:
    return ChatRequest(entry="openai", provider="openai", model=body["model"], body=body,
                       stream=stream, include_usage=False, max_output_tokens=None)


BASE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3}


@pytest.mark.parametrize(("options", "expected"), [
    (None, {"include_usage": True}),
    ({}, {"include_usage": True}),
    ({"include_usage": False}, {"include_usage": True}),
    ({"include_usage": True}, {"include_usage": True}),
    ({"include_obfuscation": False}, {"include_obfuscation": False, "include_usage": True}),
])
def test_build_call_stream_asks_for_usage(options: dict[str, Any] | None,
                                          expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {**BASE, "stream": True}
    if options is not None:
        body["stream_options"] = options
    before = copy.deepcopy(body)
    call = ADAPTER.build_call(_chat(body, stream=True), CREDENTIAL)
    sent = orjson.loads(call.body)
    assert sent["stream_options"] == expected
    assert {k: v for k, v in sent.items() if k != "stream_options"} == {
        k: v for k, v in before.items() if k != "stream_options"}
    assert body == before  # the request's own body is not mutated


def test_build_call_non_stream_body_unchanged() -> None:
    body = {**BASE, "tools": [{"type": "function", "function": {"name": "f"}}]}
    call = ADAPTER.build_call(_chat(body, stream=False), CREDENTIAL)
    assert call.body == orjson.dumps(body)
    assert "stream_options" not in orjson.loads(call.body)


@pytest.mark.parametrize(("settings", "url", "authorization"), [
    (ProviderSettings(api_key="sk-abc"), "https://api.openai.com/v1/chat/completions",
     "Bearer sk-abc"),
    (ProviderSettings(base_url="http://localhost:8000/v1/", api_key=""),
     "http://localhost:8000/v1/chat/completions", None),
    (ProviderSettings(base_url="http://localhost:8000/v1", api_key="local"),
     "http://localhost:8000/v1/chat/completions", "Bearer local"),
])
def test_build_call_url_and_headers(settings: ProviderSettings, url: str,
                                    authorization: str | None) -> None:
    call = OpenAIAdapter(settings).build_call(_chat(dict(BASE), stream=False),
                                             configured_credentials(settings)[0])
    assert call.url == url
    assert call.headers.get("Authorization") == authorization
    assert call.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("base_url", ["https://api.openai.com/v1", "https://API.OpenAI.com/v1/"])
def test_build_call_official_host_needs_key(base_url: str) -> None:
    settings = ProviderSettings(base_url=base_url, api_key="")
    with pytest.raises(BadRequest) as info:
        OpenAIAdapter(settings).build_call(_chat(dict(BASE), stream=False),
                                           configured_credentials(settings)[0])
    assert info.value.status == 400
    assert info.value.code == "missing_provider_credential"
    assert "OPENAI_API_KEY" in info.value.message


# -- OpenAIAdapter.map_error -------------------------------------------------------------------

def test_map_error_keeps_status_message_and_retry_after() -> None:
    body = orjson.dumps({"error": {"message": "Rate limit reached for gpt-4o-mini",
                                   "type": "requests", "param": None,
                                   "code": "rate_limit_exceeded"}})
    exc = ADAPTER.map_error(429, body, {"Retry-After": "20", "x-request-id": "req_1",
                                        "Content-Type": "application/json"})
    assert isinstance(exc, UpstreamStatusError)
    assert exc.status == 429
    assert "Rate limit reached for gpt-4o-mini" in exc.message
    assert exc.openai_type == "requests"
    assert exc.headers == {"Retry-After": "20"}
    assert exc.details["upstream_status"] == 429
    assert exc.details["upstream_error"]["code"] == "rate_limit_exceeded"
    assert exc.details["provider"] == "openai"


@pytest.mark.parametrize(("status", "body", "headers", "fragment", "relay"), [
    (503, b"<html>Service Unavailable</html>", {"retry-after": "5"},
     "<html>Service Unavailable</html>", {"retry-after": "5"}),
    (500, b"", {}, "upstream answered 500", {}),
    (400, b'{"error": "plain string"}', {}, "upstream error 400: plain string", {}),
    (401, b'{"error": {"message": "Incorrect API key provided"}}', {},
     "Incorrect API key provided", {}),
    (502, b"[1, 2]", {"RETRY-AFTER": "1"}, "[1, 2]", {"RETRY-AFTER": "1"}),
])
def test_map_error_other_bodies(status: int, body: bytes, headers: dict[str, str],
                                fragment: str, relay: dict[str, str]) -> None:
    exc = ADAPTER.map_error(status, body, headers)
    assert exc.status == status
    assert fragment in exc.message
    assert exc.headers == relay
    assert exc.openai_type == "api_error"
