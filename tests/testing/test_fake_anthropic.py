"""The fake's Anthropic Messages route, read by the official SDK and byte by byte."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from aiohttp.test_utils import TestClient

from gateway.testing.fake_anthropic import count_input_tokens
from gateway.testing.fake_upstream import build_app
from tests.testing.fake_wire import DEFAULT_REPLY, script, sse_events, toks

HEADERS = {"x-api-key": "ak", "anthropic-version": "2023-06-01"}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
WEATHER_INPUT = {"city": "fake", "days": 1}


def ceil_six_fifths(tokens: int) -> int:
    return -(-tokens * 6 // 5)


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(build_app())


@pytest.fixture
async def sdk(client: TestClient) -> AsyncIterator[anthropic.AsyncAnthropic]:
    base_url = str(client.make_url(""))
    sdk = anthropic.AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0)
    yield sdk
    await sdk.close()


def test_input_token_rule() -> None:
    body = {
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
            },
        ],
    }
    plain = toks("Be brief.", "What is in this image?", '{"a":1}', "sunny")
    assert count_input_tokens(body) == ceil_six_fifths(plain)
    assert count_input_tokens({"system": "abc", "messages": []}) == ceil_six_fifths(toks("abc"))


async def test_sdk_create(sdk: anthropic.AsyncAnthropic, client: TestClient) -> None:
    message = await sdk.messages.create(
        model="claude-test",
        max_tokens=5,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert message.id == "msg_fake_1"
    assert message.model == "claude-test"
    assert message.content[0].type == "text"
    assert message.content[0].text == "w1 w2 w3 w4 w5"
    assert (message.stop_reason, message.stop_sequence) == ("max_tokens", None)
    assert message.usage.input_tokens == ceil_six_fifths(toks("Be brief.", "hello there"))
    assert message.usage.output_tokens == 5
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    assert message._request_id == "req_fake_1"
    entry = (await (await client.get("/_fake/requests")).json())["requests"][0]
    assert entry["path"] == "/v1/messages"
    # This SDK sends its api_key as a Bearer token; the raw tests send x-api-key.
    assert entry["headers"]["Authorization"] == "Bearer x"
    assert entry["headers"]["anthropic-version"]


async def test_sdk_stream_helper(sdk: anthropic.AsyncAnthropic) -> None:
    async with sdk.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == DEFAULT_REPLY
    assert final.content[0].type == "text" and final.content[0].text == DEFAULT_REPLY
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == ceil_six_fifths(toks("hi"))
    assert final.usage.output_tokens == 12


async def test_sdk_raw_stream_events(sdk: anthropic.AsyncAnthropic) -> None:
    stream = await sdk.messages.create(
        model="claude-test",
        max_tokens=2,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops ping
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.output_tokens == 1
    assert (delta.delta.stop_reason, delta.usage.output_tokens) == ("max_tokens", 2)


async def test_wire_stream_is_named_sse(client: TestClient) -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/messages", json={**body, "stream": True}, headers=HEADERS)
    assert resp.content_type == "text/event-stream"
    assert resp.headers["request-id"].startswith("req_fake_")
    events = sse_events(await resp.read())
    names = [e["event"] for e in events]
    assert names == ["message_start", "content_block_start", "ping"] + [
        "content_block_delta"
    ] * 9 + ["content_block_stop", "message_delta", "message_stop"]
    data = [json.loads(e["data"]) for e in events]
    assert [d["type"] for d in data] == names
    assert data[0]["message"]["content"] == [] and data[0]["message"]["stop_reason"] is None
    assert data[1]["content_block"] == {"type": "text", "text": ""}
    assert data[3]["delta"] == {"type": "text_delta", "text": "w1 "}
    assert data[-2]["usage"] == {
        "input_tokens": ceil_six_fifths(toks("hi")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 9,
    }
    assert data[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}


async def test_tool_use(sdk: anthropic.AsyncAnthropic) -> None:
    message = await sdk.messages.create(
        model="claude-test",
        max_tokens=100,
        tools=[WEATHER, {**WEATHER, "name": "other"}],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Please use tool for Paris"}],
    )
    (block,) = message.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("toolu_fake_1", "get_weather", WEATHER_INPUT)
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == toks(json.dumps(WEATHER_INPUT, separators=(",", ":")))


async def test_tool_use_stream(sdk: anthropic.AsyncAnthropic) -> None:
    async with sdk.messages.stream(
        model="claude-test",
        max_tokens=100,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "use tool"}],
    ) as stream:
        partials = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    assert len(partials) == final.usage.output_tokens > 1
    assert json.loads("".join(partials)) == WEATHER_INPUT
    assert final.content[0].type == "tool_use" and final.content[0].input == WEATHER_INPUT
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("tool_choice", "text", "expected"),
    [
        ({"type": "tool", "name": "other"}, "hi", "other"),
        ({"type": "any"}, "hi", "get_weather"),
        ({"type": "none"}, "use tool", None),
        (None, "no tools wanted", None),
    ],
)
async def test_tool_choice(
    client: TestClient, tool_choice: dict[str, str] | None, text: str, expected: str | None
) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 50,
        "tools": [WEATHER, {**WEATHER, "name": "other"}],
        "messages": [{"role": "user", "content": text}],
    }
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    message = await (await client.post("/v1/messages", json=body, headers=HEADERS)).json()
    block = message["content"][0]
    assert block.get("name") == expected
    assert block["type"] == ("text" if expected is None else "tool_use")


async def test_stop_sequence_and_cached_tokens(
    sdk: anthropic.AsyncAnthropic, client: TestClient
) -> None:
    await script(client, {"cached_tokens": 2}, {"cached_tokens": 10_000})
    prompt = ceil_six_fifths(toks("hello world"))
    kwargs: Any = {"model": "m", "messages": [{"role": "user", "content": "hello world"}]}
    message = await sdk.messages.create(max_tokens=100, stop_sequences=["w3"], **kwargs)
    assert message.content[0].type == "text" and message.content[0].text == "w1 w2"
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "w3")
    assert message.usage.output_tokens == 2
    assert message.usage.cache_read_input_tokens == 2
    assert message.usage.input_tokens == prompt - 2  # cache reads are not input_tokens
    clamped = await sdk.messages.create(max_tokens=100, **kwargs)
    assert clamped.usage.cache_read_input_tokens == prompt
    assert clamped.usage.input_tokens == 0


@pytest.mark.parametrize(
    ("status", "type_", "error_class"),
    [
        (429, "rate_limit_error", anthropic.RateLimitError),
        (529, "overloaded_error", anthropic.APIStatusError),
        (500, "api_error", anthropic.InternalServerError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (413, "request_too_large", anthropic.APIStatusError),
    ],
)
async def test_scripted_errors(
    sdk: anthropic.AsyncAnthropic,
    client: TestClient,
    status: int,
    type_: str,
    error_class: type[anthropic.APIStatusError],
) -> None:
    await script(client, {"status": status})
    with pytest.raises(error_class) as caught:
        await sdk.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == status
    assert caught.value.body == {
        "type": "error",
        "error": {"type": type_, "message": caught.value.body["error"]["message"]},  # type: ignore[index]
        "request_id": "req_fake",
    }


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, HEADERS, 400,
         "max_tokens: Field required"),
        ({"model": "m", "max_tokens": 5, "messages": []}, HEADERS, 400,
         "messages: at least one message is required"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
         HEADERS, 400, "messages.0.role: Input should be 'user' or 'assistant'"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
         {"x-api-key": "k"}, 400, "anthropic-version: header is required"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
         {"anthropic-version": "2023-06-01"}, 401, "x-api-key header is required"),
    ],
)  # fmt: skip
async def test_invalid_requests(
    client: TestClient, body: dict[str, Any], headers: dict[str, str], status: int, message: str
) -> None:
    resp = await client.post("/v1/messages", json=body, headers=headers)
    assert resp.status == status
    error = (await resp.json())["error"]
    expected_type = "invalid_request_error" if status == 400 else "authentication_error"
    assert error == {"type": expected_type, "message": message}


async def test_count_tokens_does_not_take_the_script(
    sdk: anthropic.AsyncAnthropic, client: TestClient
) -> None:
    await script(client, {"status": 500})
    messages: Any = [{"role": "user", "content": "count me please"}]
    counted = await sdk.messages.count_tokens(model="m", system="sys", messages=messages)
    assert counted.input_tokens == ceil_six_fifths(toks("sys", "count me please"))
    with pytest.raises(anthropic.InternalServerError):
        await sdk.messages.create(model="m", max_tokens=5, messages=messages)
    log = await (await client.get("/_fake/requests")).json()
    assert [r["path"] for r in log["requests"]] == ["/v1/messages/count_tokens", "/v1/messages"]
