"""Validate stage: the OpenAI and native body shapes, JSON parsing, the metadata header."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.entries.base import Limits
from gateway.entries.native import validate_native
from gateway.entries.openai_chat import validate_openai
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.pipeline.validate import parse_json_object, parse_metadata_header
from gateway.settings import ServerSettings, ValidationSettings

LIMITS = Limits(max_body_bytes=ServerSettings().max_body_bytes,
                max_messages=ValidationSettings().max_messages,
                max_content_chars=ValidationSettings().max_content_chars)
PROVIDERS = frozenset({"openai"})
USER = {"role": "user", "content": "Hello"}


def test_default_limits() -> None:
    assert (LIMITS.max_messages, LIMITS.max_content_chars) == (100, 32_000)


def _body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [dict(USER)]}
    body.update(fields)
    return body


def _fields(exc: BadRequest) -> list[str]:
    return [e["field"] for e in exc.details["errors"]]


def _user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# -- OpenAI shape ------------------------------------------------------------------------------

def test_minimal_valid_body() -> None:
    body = _body()
    chat = validate_openai(body, LIMITS)
    assert chat.entry == "openai"
    assert chat.provider == "openai"
    assert chat.model == "gpt-4o-mini"
    assert chat.body is body
    assert chat.stream is False
    assert chat.include_usage is False
    assert chat.max_output_tokens is None
    assert chat.metadata == {}


def test_unknown_fields_pass_through_untouched() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in JSON."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url",
                 "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "parallel_tool_calls": False,
        "service_tier": "auto",
        "x_vendor_extension": [1, 2, 3],
        "max_completion_tokens": 300,
        "max_tokens": 100,
        "user": "u-1",
        "seed": 42,
        "logit_bias": {"50256": -100},
    }
    before = copy.deepcopy(body)
    chat = validate_openai(body, LIMITS)
    assert chat.body == before
    assert chat.body["tool_choice"] == before["tool_choice"]
    assert chat.max_output_tokens == 300  # max_completion_tokens wins over max_tokens


@pytest.mark.parametrize(("fields", "stream", "include_usage"), [
    ({}, False, False),
    ({"stream": False}, False, False),
    ({"stream": True}, True, False),
    ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
    ({"stream": True, "stream_options": {"include_usage": False}}, True, False),
    ({"stream": True, "stream_options": {}}, True, False),
    ({"stream": False, "stream_options": None}, False, False),
])
def test_stream_flags(fields: dict[str, Any], stream: bool, include_usage: bool) -> None:
    chat = validate_openai(_body(**fields), LIMITS)
    assert (chat.stream, chat.include_usage) == (stream, include_usage)


@pytest.mark.parametrize("fields", [
    {"stream_options": {"include_usage": True}},
    {"stream": False, "stream_options": {"include_usage": True}},
])
def test_stream_options_without_stream(fields: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        validate_openai(_body(**fields), LIMITS)
    assert info.value.status == 400
    assert _fields(info.value) == ["stream_options"]


def test_max_tokens_and_metadata_are_taken() -> None:
    chat = validate_openai(_body(max_tokens=64, metadata={"feature": "search"}), LIMITS)
    assert chat.max_output_tokens == 64
    assert chat.metadata == {"feature": "search"}


@pytest.mark.parametrize(("body", "field"), [
    ({"messages": [USER]}, "model"),
    (_body(model=5), "model"),
    (_body(model=""), "model"),
    (_body(model="   "), "model"),
    (_body(model="m" * 257), "model"),
    ({"model": "gpt-4o-mini"}, "messages"),
    (_body(messages={"role": "user", "content": "hi"}), "messages"),
    (_body(messages="hi"), "messages"),
    (_body(messages=[]), "messages"),
    (_body(messages=[dict(USER) for _ in range(101)]), "messages"),
    (_body(messages=["hi"]), "messages[0]"),
    (_body(messages=[_user("x" * 32_001)]), "messages[0].content"),
    (_body(messages=[USER, _user([{"type": "text", "text": "a" * 16_000},
                                  {"type": "image_url", "image_url": {"url": "u"}},
                                  {"type": "text", "text": "b" * 16_001}])]),
     "messages[1].content"),
    (_body(messages=[_user([{"type": "text", "text": 5}])]), "messages[0].content[0].text"),
    (_body(messages=[_user([{"text": "no type"}])]), "messages[0].content[0]"),
    (_body(messages=[_user(None)]), "messages[0].content"),
    (_body(messages=[_user(42)]), "messages[0].content"),
    (_body(messages=[{"role": "assistant", "content": None}]), "messages[0].content"),
    (_body(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
    (_body(messages=[{"content": "hi"}]), "messages[0].role"),
    (_body(messages=[USER, {"role": "tool", "content": "42"}]), "messages[1].tool_call_id"),
    (_body(messages=[USER, {"role": "tool", "tool_call_id": 7, "content": "42"}]),
     "messages[1].tool_call_id"),
    (_body(temperature=2.5), "temperature"),
    (_body(temperature=-0.1), "temperature"),
    (_body(temperature=True), "temperature"),
    (_body(temperature="0.5"), "temperature"),
    (_body(top_p=-0.1), "top_p"),
    (_body(top_p=1.5), "top_p"),
    (_body(presence_penalty=2.5), "presence_penalty"),
    (_body(frequency_penalty=-3), "frequency_penalty"),
    (_body(max_tokens=0), "max_tokens"),
    (_body(max_tokens="5"), "max_tokens"),
    (_body(max_tokens=5.0), "max_tokens"),
    (_body(max_tokens=True), "max_tokens"),
    (_body(max_completion_tokens=-1), "max_completion_tokens"),
    (_body(n=0), "n"),
    (_body(n=129), "n"),
    (_body(top_logprobs=21), "top_logprobs"),
    (_body(stop=["a", "b", "c", "d", "e"]), "stop"),
    (_body(stop=[]), "stop"),
    (_body(stop=["a", 1]), "stop"),
    (_body(stop=5), "stop"),
    (_body(logit_bias={"50256": 101}), "logit_bias.50256"),
    (_body(logit_bias={"50256": -100.5}), "logit_bias.50256"),
    (_body(logit_bias=[1]), "logit_bias"),
    (_body(metadata="team=a"), "metadata"),
    (_body(metadata=["a"]), "metadata"),
    (_body(metadata={"blob": "x" * 17_000}), "metadata"),
    (_body(stream="true"), "stream"),
    (_body(logprobs=1), "logprobs"),
    (_body(tools={"type": "function"}), "tools"),
    (_body(response_format="json"), "response_format"),
    (_body(user=5), "user"),
])
def test_openai_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_openai(body, LIMITS)
    exc = info.value
    assert exc.status == 400
    assert exc.code == "invalid_request"
    assert _fields(exc) == [field]
    assert exc.message.startswith(f"{field}: ")


@pytest.mark.parametrize("messages", [
    [dict(USER) for _ in range(100)],
    [_user("x" * 32_000)],
    [_user([{"type": "text", "text": "a" * 16_000}, {"type": "text", "text": "b" * 16_000}])],
    [_user([{"type": "image_url", "image_url": {"url": "data:" + "A" * 40_000}}])],
])
def test_limits_are_inclusive(messages: list[dict[str, Any]]) -> None:
    chat = validate_openai(_body(messages=messages), LIMITS)
    assert len(chat.body["messages"]) == len(messages)


@pytest.mark.parametrize("fields", [
    {"temperature": 0}, {"temperature": 2}, {"top_p": 1}, {"n": 128}, {"max_tokens": 1},
    {"stop": "END"}, {"stop": ["a", "b", "c", "d"]}, {"logit_bias": {"1": 100, "2": -100}},
    {"temperature": None}, {"seed": -5}, {"top_logprobs": 0},
])
def test_boundary_values_pass(fields: dict[str, Any]) -> None:
    assert validate_openai(_body(**fields), LIMITS).body == _body(**fields)


def test_several_errors_are_all_listed() -> None:
    body = {"model": 7, "messages": [{"role": "robot", "content": "hi"}],
            "temperature": 9, "n": 0, "stream_options": {}, "metadata": 3}
    with pytest.raises(BadRequest) as info:
        validate_openai(body, LIMITS)
    fields = _fields(info.value)
    assert fields == ["model", "messages[0].role", "temperature", "n", "stream_options",
                      "metadata"]
    assert "(and 1 more)" in info.value.message  # five named, then a count
    for error in info.value.details["errors"]:
        assert error["message"]


# -- parse_json_object -------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "an array"),
    (b'"text"', "a string"),
    (b"null", "null"),
    (b"", "empty"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_parse_json_object_rejects(raw: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_json_object(raw, LIMITS.max_body_bytes)
    assert info.value.status == 400
    assert fragment in info.value.message


def test_parse_json_object_accepts_object() -> None:
    assert parse_json_object(b'{"model": "m", "n": 1}', 1024) == {"model": "m", "n": 1}


def test_parse_json_object_size_limit() -> None:
    limits = 1024
    at_limit = b'{"a": "' + b"x" * (1024 - 9) + b'"}'
    assert len(at_limit) == 1024
    assert parse_json_object(at_limit, limits)["a"] == "x" * 1015
    with pytest.raises(PayloadTooLarge) as info:
        parse_json_object(at_limit[:-2] + b'x"}', limits)
    assert info.value.status == 413
    assert info.value.details == {"limit_bytes": 1024}
    with pytest.raises(PayloadTooLarge):  # the size is checked before parsing
        parse_json_object(b"[" * 2000, limits)


# -- native shape ------------------------------------------------------------------------------

def _native(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"provider": "openai", "model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "Hello"}]}
    body.update(fields)
    return body


def test_native_translated() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    body = _native(messages=messages, metadata={"team": "search", "run": 3},
                   maxOutputTokens=256, temperature=0.2, topP=0.9, presencePenalty=0.5,
                   frequencyPenalty=-0.5, stop=["END"])
    chat = validate_native(body, LIMITS, PROVIDERS)
    assert chat.entry == "native"
    assert chat.provider == "openai"
    assert chat.model == "gpt-4o-mini"
    assert chat.body == {
        "model": "gpt-4o-mini", "messages": messages, "max_completion_tokens": 256,
        "temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "stop": ["END"]}
    assert "metadata" not in chat.body
    assert chat.metadata == {"team": "search", "run": 3}
    assert chat.max_output_tokens == 256
    assert chat.stream is False and "stream" not in chat.body
    assert chat.include_usage is False


def test_native_minimal() -> None:
    chat = validate_native(_native(), LIMITS, PROVIDERS)
    assert chat.body == {"model": "gpt-4o-mini",
                         "messages": [{"role": "user", "content": "Hello"}]}
    assert chat.metadata == {}
    assert chat.max_output_tokens is None


def test_native_stream() -> None:
    chat = validate_native(_native(stream=True), LIMITS, PROVIDERS)
    assert chat.stream is True
    assert chat.body["stream"] is True
    assert chat.include_usage is False


@pytest.mark.parametrize(("body", "field", "fragment"), [
    (_native(topK=5), "topK", "unknown field"),
    (_native(max_tokens=5), "max_tokens", "maxOutputTokens"),
    (_native(tools=[]), "tools", "allowed"),
    ({"model": "gpt-4o-mini", "messages": [USER]}, "provider", "required"),
    (_native(provider=""), "provider", "required"),
    (_native(provider=3), "provider", "required"),
    (_native(provider="anthropic"), "provider", "available: openai"),
    (_native(model=None), "model", "required"),
    (_native(messages=[{"role": "user", "content": ""}]), "messages[0].content", "empty"),
    (_native(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
     "messages[0].content", "a string"),
    (_native(messages=[{"role": "tool", "tool_call_id": "c1", "content": "42"}]),
     "messages[0].role", "assistant, system, user"),
    (_native(messages=[{"role": "developer", "content": "x"}]), "messages[0].role", "one of"),
    (_native(messages=[]), "messages", "1 to 100"),
    (_native(messages=[{"role": "user", "content": "x" * 32_001}]), "messages[0].content",
     "32000"),
    (_native(stream="yes"), "stream", "boolean"),
    (_native(metadata=None), "metadata", "object"),
    (_native(metadata=[1]), "metadata", "object"),
    (_native(maxOutputTokens=0), "maxOutputTokens", "from 1 to"),
    (_native(temperature=3), "temperature", "between 0 and 2"),
    (_native(topP=True), "topP", "number"),
    (_native(presencePenalty=-2.5), "presencePenalty", "between -2 and 2"),
    (_native(frequencyPenalty="1"), "frequencyPenalty", "number"),
    (_native(stop=["a"] * 5), "stop", "1 to 4"),
])
def test_native_errors(body: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_native(body, LIMITS, PROVIDERS)
    assert info.value.status == 400
    errors = info.value.details["errors"]
    matching = [e for e in errors if e["field"] == field]
    assert matching, errors
    assert fragment in matching[0]["message"]


def test_native_tool_role_is_rejected_even_with_everything_else_valid() -> None:
    body = _native(messages=[USER, {"role": "tool", "tool_call_id": "c1", "content": "ok"}])
    with pytest.raises(BadRequest) as info:
        validate_native(body, LIMITS, PROVIDERS)
    assert _fields(info.value) == ["messages[1].role"]


def test_native_unknown_fields_all_named() -> None:
    with pytest.raises(BadRequest) as info:
        validate_native(_native(b=1, a=2), LIMITS, PROVIDERS)
    assert _fields(info.value) == ["a", "b"]


# -- parse_metadata_header ---------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (None, {}),
    ("", {}),
    ('{"team": "search", "n": 1}', {"team": "search", "n": 1}),
    ("{}", {}),
])
def test_metadata_header_valid(value: str | None, expected: dict[str, Any]) -> None:
    assert parse_metadata_header(value) == expected


@pytest.mark.parametrize("value", [
    "{not json", "[1, 2]", '"text"', "42", "null",
    orjson.dumps({"blob": "x" * 17_000}).decode(),
])
def test_metadata_header_invalid(value: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_metadata_header(value)
    assert info.value.status == 400
    assert "X-AI-Cost-Gateway-Metadata" in info.value.message
