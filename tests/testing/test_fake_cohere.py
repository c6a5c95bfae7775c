"""The fake's Cohere Chat v2 route, read byte by byte (no Cohere SDK here)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.testing.fake_cohere import count_billed_input_tokens, template_tokens
from gateway.testing.fake_upstream import build_app
from tests.testing.fake_wire import DEFAULT_REPLY, script, sse_events, toks

CHAT = "/v2/chat"
AUTH = {"Authorization": "Bearer ck"}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hello there"}]},
]
BILLED = toks("Be brief.", "Hello there")
PROCESSED = BILLED + 150 + 5 * 2
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(build_app())


def usage(output_tokens: int) -> dict[str, Any]:
    return {
        "billed_units": {"input_tokens": BILLED, "output_tokens": output_tokens},
        "tokens": {"input_tokens": PROCESSED, "output_tokens": output_tokens},
    }


def test_token_rule() -> None:
    assert count_billed_input_tokens(MESSAGES) == BILLED
    assert template_tokens(2) == PROCESSED - BILLED
    history = [
        {
            "role": "assistant",
            "tool_plan": "I will search.",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "search", "arguments": '{"q":"x"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1",
         "content": [{"type": "document", "document": {"data": "result"}}]},
    ]  # fmt: skip
    assert count_billed_input_tokens(history) == toks("I will search.", '{"q":"x"}', "result")


async def test_chat(client: TestClient) -> None:
    resp = await client.post(CHAT, json={"model": "command-a", "messages": MESSAGES}, headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {
        "id": "00000000-0000-4000-8000-000000000001",
        "message": {"role": "assistant", "content": [{"type": "text", "text": DEFAULT_REPLY}]},
        "finish_reason": "COMPLETE",
        "usage": usage(12),
    }


@pytest.mark.parametrize(
    ("extra", "text", "finish"),
    [
        ({"max_tokens": 2}, "w1 w2", "MAX_TOKENS"),
        ({"stop_sequences": ["w4"]}, "w1 w2 w3", "STOP_SEQUENCE"),
        ({"max_tokens": 2, "stop_sequences": ["w4"]}, "w1 w2", "MAX_TOKENS"),
    ],
)
async def test_finish_reasons(
    client: TestClient, extra: dict[str, Any], text: str, finish: str
) -> None:
    body = {"model": "command-a", "messages": MESSAGES, **extra}
    data = await (await client.post(CHAT, json=body, headers=AUTH)).json()
    assert data["message"]["content"][0]["text"] == text
    assert data["finish_reason"] == finish
    assert data["usage"]["billed_units"]["output_tokens"] == len(text.split())


async def test_stream(client: TestClient) -> None:
    body = {"model": "command-a", "messages": MESSAGES, "stream": True, "max_tokens": 2}
    resp = await client.post(CHAT, json=body, headers=AUTH)
    assert resp.content_type == "text/event-stream"
    events = sse_events(await resp.read())
    assert events[-1] == {"data": "[DONE]"}
    data = [json.loads(e["data"]) for e in events[:-1]]
    assert [e["event"] for e in events[:-1]] == [d["type"] for d in data]
    assert [d["type"] for d in data] == [
        "message-start",
        "content-start",
        "content-delta",
        "content-delta",
        "content-end",
        "message-end",
    ]
    assert data[0]["id"] == "00000000-0000-4000-8000-000000000001"
    assert data[0]["delta"]["message"]["role"] == "assistant"
    assert data[1] == {
        "type": "content-start",
        "index": 0,
        "delta": {"message": {"content": {"type": "text", "text": ""}}},
    }
    assert [d["delta"]["message"]["content"]["text"] for d in data[2:4]] == ["w1 ", "w2"]
    assert data[4] == {"type": "content-end", "index": 0}
    assert data[5]["delta"] == {"finish_reason": "MAX_TOKENS", "usage": usage(2)}


async def test_tool_call(client: TestClient) -> None:
    messages = [{"role": "user", "content": "Use tool to find cats"}]
    body = {"model": "command-a", "messages": messages, "tools": [SEARCH]}
    data = await (await client.post(CHAT, json=body, headers=AUTH)).json()
    assert data["finish_reason"] == "TOOL_CALL"
    (call,) = data["message"]["tool_calls"]
    assert call == {
        "id": "search_fake_1",
        "type": "function",
        "function": {"name": "search", "arguments": '{"query":"fake"}'},
    }
    assert data["usage"]["billed_units"]["output_tokens"] == toks('{"query":"fake"}')


async def test_tool_call_stream(client: TestClient) -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "c", "messages": messages, "tools": [SEARCH], "tool_choice": "REQUIRED"}
    resp = await client.post(CHAT, json={**body, "stream": True}, headers=AUTH)
    data = [json.loads(e["data"]) for e in sse_events(await resp.read())[:-1]]
    types = [d["type"] for d in data]
    assert types[:2] == ["message-start", "tool-call-start"]
    assert types[-2:] == ["tool-call-end", "message-end"]
    start = data[1]["delta"]["message"]["tool_calls"]
    assert start["id"] == "search_fake_1"
    assert start["function"] == {"name": "search", "arguments": ""}
    arguments = "".join(
        d["delta"]["message"]["tool_calls"]["function"]["arguments"] for d in data[2:-2]
    )
    assert json.loads(arguments) == {"query": "fake"}
    assert data[-1]["delta"]["finish_reason"] == "TOOL_CALL"
    assert data[-1]["delta"]["usage"]["tokens"]["output_tokens"] == len(data) - 4


async def test_cached_tokens(client: TestClient) -> None:
    await script(client, {"cached_tokens": 7}, {"cached_tokens": 10_000})
    body = {"model": "command-a", "messages": MESSAGES}
    first = await (await client.post(CHAT, json=body, headers=AUTH)).json()
    assert first["usage"] == {**usage(12), "cached_tokens": 7}
    second = await (await client.post(CHAT, json=body, headers=AUTH)).json()
    assert second["usage"]["cached_tokens"] == PROCESSED


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"messages": MESSAGES}, AUTH, 400),
        ({"model": "c", "messages": []}, AUTH, 400),
        ({"model": "c", "messages": [{"role": "chatbot", "content": "x"}]}, AUTH, 400),
        ({"model": "c", "messages": MESSAGES, "max_tokens": 0}, AUTH, 400),
        ({"model": "c", "messages": MESSAGES}, {}, 401),
    ],
)
async def test_invalid_requests(
    client: TestClient, body: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    resp = await client.post(CHAT, json=body, headers=headers)
    assert resp.status == status
    error = await resp.json()
    assert list(error) == ["message"]
    assert error["message"].startswith("invalid request" if status == 400 else "no api key")


async def test_scripted_error_shape(client: TestClient) -> None:
    await script(client, {"status": 429, "retry_after": 1.5})
    resp = await client.post(CHAT, json={"model": "c", "messages": MESSAGES}, headers=AUTH)
    assert (resp.status, resp.headers["Retry-After"]) == (429, "1.5")
    assert await resp.json() == {"message": "Rate limit reached (fake)."}
