"""One contract, every provider x every entry shape, streamed and not.

Each case goes through the real gateway to the fake upstream, which speaks that provider's
wire (JSON and SSE) and reports usage as that provider does. Checked every time: the text or
the tool call the client sees, the finish reason, the usage the client sees, the usage row
(equal to what the provider billed for the body it actually received), and the cost (the
header or the stream's cost line, equal to the row, equal to the price table's arithmetic).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, GatewayFactory, create_project, wait_for_rows

from gateway.keys import PRICES
from gateway.pricing import compute_cost
from gateway.testing import fake_anthropic, fake_cohere, fake_gemini, fake_openai
from gateway.testing.fake_reply import json_token_pieces

# provider -> (model as the client names it on the OpenAI / Anthropic shapes, native model)
MODELS = {
    "openai": ("gpt-4o-mini", "gpt-4o-mini"),
    "azure": ("azure/gpt-4o-mini", "gpt-4o-mini"),
    "anthropic": ("claude-sonnet-4-5", "claude-sonnet-4-5"),
    "gemini": ("gemini-2.5-flash", "gemini-2.5-flash"),
    "mistral": ("mistral-small-latest", "mistral-small-latest"),
    "cohere": ("command-r-08-2024", "command-r-08-2024"),
    "local": ("local/llama-3.1-8b", "llama-3.1-8b"),  # a generic OpenAI-compatible server
}
ENTRIES = ("openai", "anthropic", "native")
REPLY = " ".join(f"w{i}" for i in range(1, 13))  # the fake's default reply
WEATHER_TOOL = {"name": "get_weather", "description": "Weather for a city",
                "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}
TOOL_ARGS = {"city": "fake"}


def billed_input(provider: str, body: dict[str, Any]) -> int:
    """What the fake provider billed as input for the body it received."""
    if provider == "anthropic":
        return fake_anthropic.count_input_tokens(body)
    if provider == "gemini":
        return fake_gemini.count_prompt_tokens(body)
    if provider == "cohere":
        return fake_cohere.count_billed_input_tokens(body["messages"])
    return fake_openai.count_prompt_tokens(body["messages"])


@pytest.fixture
async def contract_gateway(make_gateway: GatewayFactory,
                           fake_upstream: FakeUpstream) -> TestClient:
    return await make_gateway(providers={"local": {
        "kind": "openai_compatible", "base_url": fake_upstream.url}})


def request_for(entry: str, provider: str, *, stream: bool, tools: bool,
                system: str = "You are terse.") -> tuple[str, dict[str, Any]]:
    model, native_model = MODELS[provider]
    user = "Please use tool for Paris" if tools else "Say hello"
    if entry == "anthropic":
        body: dict[str, Any] = {"model": model, "max_tokens": 200, "system": system,
                                "messages": [{"role": "user", "content": user}]}
        if tools:
            body["tools"] = [{"name": WEATHER_TOOL["name"],
                              "description": WEATHER_TOOL["description"],
                              "input_schema": WEATHER_TOOL["schema"]}]
        if stream:
            body["stream"] = True
        return "/v1/messages", body
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if entry == "native":
        body = {"provider": provider, "model": native_model, "messages": messages,
                "maxOutputTokens": 200}
        if stream:
            body["stream"] = True
        return "/api/proxy/chat", body
    body = {"model": model, "messages": messages, "max_tokens": 200}
    if tools:
        body["tools"] = [{"type": "function", "function": {
            "name": WEATHER_TOOL["name"], "description": WEATHER_TOOL["description"],
            "parameters": WEATHER_TOOL["schema"]}}]
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return "/v1/chat/completions", body


def parse_sse(raw: bytes) -> tuple[list[tuple[str | None, Any]], Decimal | None]:
    events: list[tuple[str | None, Any]] = []
    cost = None
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b": x-ai-cost-gateway-cost "):
                cost = Decimal(line.split(b" ")[-1].decode())
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if data:
            payload = b"\n".join(data)
            events.append((name, "[DONE]" if payload == b"[DONE]" else orjson.loads(payload)))
    return events, cost


class Seen:
    """What the client saw, whatever the shape: text, tool calls, finish, usage."""

    def __init__(self) -> None:
        self.text = ""
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []
        self.finish: str | None = None
        self.input_tokens: int | None = None  # total input, cache reads and writes included
        self.output_tokens: int | None = None


def seen_openai_completion(body: dict[str, Any]) -> Seen:
    seen = Seen()
    message = body["choices"][0]["message"]
    seen.text = message.get("content") or ""
    seen.tool_calls = [(c["function"]["name"], orjson.loads(c["function"]["arguments"]))
                       for c in message.get("tool_calls") or ()]
    seen.finish = body["choices"][0]["finish_reason"]
    seen.input_tokens = body["usage"]["prompt_tokens"]
    seen.output_tokens = body["usage"]["completion_tokens"]
    return seen


def seen_openai_stream(events: list[tuple[str | None, Any]]) -> Seen:
    seen = Seen()
    assert events[-1] == (None, "[DONE]")
    calls: dict[int, dict[str, str]] = {}
    for _, chunk in events[:-1]:
        if not chunk["choices"] and not chunk.get("usage"):
            continue  # Azure's content-filter preamble, relayed as Azure sends it
        assert chunk["object"] == "chat.completion.chunk"
        for choice in chunk["choices"]:
            delta = choice["delta"]
            seen.text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                seen.finish = choice["finish_reason"]
        if chunk.get("usage"):
            seen.input_tokens = chunk["usage"]["prompt_tokens"]
            seen.output_tokens = chunk["usage"]["completion_tokens"]
    seen.tool_calls = [(c["name"], orjson.loads(c["arguments"])) for c in calls.values()]
    return seen


def _anthropic_input(usage: dict[str, Any]) -> int:
    return (usage["input_tokens"] + (usage.get("cache_read_input_tokens") or 0)
            + (usage.get("cache_creation_input_tokens") or 0))


def seen_anthropic_message(body: dict[str, Any]) -> Seen:
    seen = Seen()
    assert body["type"] == "message" and body["role"] == "assistant"
    for block in body["content"]:
        if block["type"] == "text":
            seen.text += block["text"]
        elif block["type"] == "tool_use":
            seen.tool_calls.append((block["name"], block["input"]))
    seen.finish = body["stop_reason"]
    seen.input_tokens = _anthropic_input(body["usage"])
    seen.output_tokens = body["usage"]["output_tokens"]
    return seen


def seen_anthropic_stream(events: list[tuple[str | None, Any]]) -> Seen:
    seen = Seen()
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    blocks: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] = {}
    for name, data in events:
        assert data["type"] == name
        if name == "message_start":
            usage.update(data["message"].get("usage") or {})
        elif name == "content_block_start":
            blocks[data["index"]] = {**data["content_block"], "json": ""}
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[data["index"]]["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                blocks[data["index"]]["json"] += delta["partial_json"]
        elif name == "message_delta":
            seen.finish = data["delta"]["stop_reason"]
            usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
    for block in blocks.values():
        if block["type"] == "text":
            seen.text += block["text"]
        elif block["type"] == "tool_use":
            seen.tool_calls.append((block["name"], orjson.loads(block["json"] or "{}")))
    if "input_tokens" in usage:  # relayed as the provider sent it, usage or none
        seen.input_tokens = _anthropic_input(usage)
        seen.output_tokens = usage.get("output_tokens")
    return seen


async def call(client: TestClient, key: str, entry: str, provider: str, *, stream: bool,
               tools: bool) -> tuple[Seen, Decimal]:
    path, body = request_for(entry, provider, stream=stream, tools=tools)
    resp = await client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    raw = await resp.read()
    assert resp.status == 200, raw[:500]
    if stream:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events, cost = parse_sse(raw)
        assert cost is not None
        seen = seen_anthropic_stream(events) if entry == "anthropic" else seen_openai_stream(
            events)
        return seen, cost
    data = orjson.loads(raw)
    seen = seen_anthropic_message(data) if entry == "anthropic" else seen_openai_completion(
        data)
    return seen, Decimal(resp.headers["X-AI-Cost-Gateway-Cost"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("provider", list(MODELS))
async def test_text_usage_and_cost(contract_gateway: TestClient, fake_upstream: FakeUpstream,
                                   provider: str, entry: str, stream: bool) -> None:
    _, key = await create_project(contract_gateway)
    seen, cost = await call(contract_gateway, key, entry, provider, stream=stream, tools=False)
    assert seen.text == REPLY
    assert seen.finish == ("end_turn" if entry == "anthropic" else "stop")
    assert seen.tool_calls == []

    upstream_body = fake_upstream.state.log[-1]["body"]
    [row] = await wait_for_rows(contract_gateway, 1)
    assert row["provider"] == provider and row["status"] == 200
    assert (row["input_source"], row["output_source"]) == ("provider", "provider")
    assert row["input_tokens"] == billed_input(provider, upstream_body) > 0
    assert row["output_tokens"] == 12
    if entry != "native" or not stream:  # the native shape has no usage in its stream
        assert (seen.input_tokens, seen.output_tokens) == (row["input_tokens"], 12)
    price, fallback = contract_gateway.app[PRICES].resolve(provider, row["model"])
    assert fallback == (provider == "local")  # an unknown local model: flagged, never free
    assert row["priced_by_fallback"] == fallback
    usage = _usage(row)
    assert row["cost_usd"] == compute_cost(usage, price) == cost > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("entry", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", list(MODELS))
async def test_tool_calls(contract_gateway: TestClient, fake_upstream: FakeUpstream,
                          provider: str, entry: str, stream: bool) -> None:
    _, key = await create_project(contract_gateway)
    seen, cost = await call(contract_gateway, key, entry, provider, stream=stream, tools=True)
    assert seen.tool_calls == [("get_weather", TOOL_ARGS)]
    assert seen.finish == ("tool_use" if entry == "anthropic" else "tool_calls")
    [row] = await wait_for_rows(contract_gateway, 1)
    assert row["output_tokens"] == len(json_token_pieces(TOOL_ARGS))
    assert row["output_source"] == "provider"
    assert row["cost_usd"] == cost > 0


def _usage(row: Any) -> Any:
    from gateway.domain import Usage

    return Usage(input_tokens=row["input_tokens"], cached_input_tokens=row["cached_input_tokens"],
                 output_tokens=row["output_tokens"],
                 cache_write_tokens=row["cache_write_tokens"])


@pytest.mark.parametrize("entry", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_cached_input_is_metered_and_priced(contract_gateway: TestClient,
                                                  fake_upstream: FakeUpstream, provider: str,
                                                  entry: str) -> None:
    _, key = await create_project(contract_gateway)
    behaviour: dict[str, Any] = {"cached_tokens": 2}
    if provider == "anthropic":
        behaviour["cache_write_tokens"] = 3
    fake_upstream.script(behaviour)
    seen, cost = await call(contract_gateway, key, entry, provider, stream=False, tools=False)
    [row] = await wait_for_rows(contract_gateway, 1)
    assert row["cached_input_tokens"] == 2
    assert row["cache_write_tokens"] == (3 if provider == "anthropic" else 0)
    assert seen.input_tokens == row["input_tokens"]
    price, _ = contract_gateway.app[PRICES].resolve(provider, row["model"])
    assert price.cached_input < price.input
    assert row["cost_usd"] == compute_cost(_usage(row), price) == cost
    full = compute_cost(_usage(row).__class__(input_tokens=row["input_tokens"],
                                              output_tokens=row["output_tokens"]), price)
    assert cost != full  # cache reads (and writes) are not billed at the input price


@pytest.mark.parametrize("entry", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "cohere"])
async def test_a_stream_without_usage_is_counted_and_flagged(
        contract_gateway: TestClient, fake_upstream: FakeUpstream, provider: str,
        entry: str) -> None:
    _, key = await create_project(contract_gateway)
    fake_upstream.script({"no_usage": True})
    seen, cost = await call(contract_gateway, key, entry, provider, stream=True, tools=False)
    assert seen.text == REPLY
    [row] = await wait_for_rows(contract_gateway, 1)
    exact = provider == "openai"  # gpt-4o-mini's own tokenizer; the others are estimates
    kind = "counted" if exact else "estimated"
    assert (row["input_source"], row["output_source"]) == (kind, kind)
    assert row["input_tokens"] > 0 and row["output_tokens"] >= 12
    assert row["cost_usd"] == cost > 0  # never free


@pytest.mark.parametrize("entry", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "cohere"])
async def test_a_stream_cut_upstream_ends_with_an_error_event_and_charges_what_was_sent(
        contract_gateway: TestClient, fake_upstream: FakeUpstream, provider: str,
        entry: str) -> None:
    _, key = await create_project(contract_gateway)
    fake_upstream.script({"stream_cut_after": 4})
    path, body = request_for(entry, provider, stream=True, tools=False)
    resp = await contract_gateway.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200  # the stream had begun
    events, _ = parse_sse(await resp.read())
    last_name, last = events[-1]
    if entry == "anthropic":
        assert last_name == "error" and last["type"] == "error"
        assert last["error"]["message"]
    else:
        assert "error" in last and last["error"]["code"].startswith("upstream")
    [row] = await wait_for_rows(contract_gateway, 1)
    assert row["status"] == 502
    assert row["output_tokens"] > 0 and row["cost_usd"] > 0  # what was streamed is charged


PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
         "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "cohere"])
async def test_images_reach_every_provider_in_its_own_shape(
        contract_gateway: TestClient, fake_upstream: FakeUpstream, provider: str) -> None:
    _, key = await create_project(contract_gateway)
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": PIXEL}}]
    body = {"model": MODELS[provider][0], "max_tokens": 50,
            "messages": [{"role": "user", "content": content}]}
    resp = await contract_gateway.post("/v1/chat/completions", json=body,
                                       headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    sent = orjson.dumps(fake_upstream.state.log[-1]["body"])
    assert PIXEL.split(",", 1)[1].encode() in sent  # the image bytes went upstream
    if provider == "anthropic":
        assert b'"type":"image"' in sent and b'"media_type":"image/png"' in sent
    elif provider == "gemini":
        assert b'"inlineData"' in sent or b'"inline_data"' in sent


async def test_an_anthropic_image_block_reaches_openai(contract_gateway: TestClient,
                                                       fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(contract_gateway)
    data = PIXEL.split(",", 1)[1]
    resp = await contract_gateway.post("/v1/messages", headers={"x-api-key": key}, json={
        "model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": data}},
            {"type": "text", "text": "What is this?"}]}]})
    assert resp.status == 200, await resp.text()
    [message] = fake_upstream.state.log[-1]["body"]["messages"]
    assert message["content"][0] == {"type": "image_url", "image_url": {"url": PIXEL}}


@pytest.mark.parametrize(("provider", "field", "value"), [
    ("anthropic", "logprobs", True), ("anthropic", "n", 2), ("gemini", "logit_bias", {"1": 2}),
    ("cohere", "n", 3), ("mistral", "logprobs", True)])
async def test_what_a_provider_cannot_take_is_a_400_naming_it(
        contract_gateway: TestClient, fake_upstream: FakeUpstream, provider: str, field: str,
        value: Any) -> None:
    _, key = await create_project(contract_gateway)
    body = {"model": MODELS[provider][0], "messages": [{"role": "user", "content": "hi"}],
            field: value}
    resp = await contract_gateway.post("/v1/chat/completions", json=body,
                                       headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "untranslatable_feature" and field in error["message"]
    assert fake_upstream.state.received == 0  # nothing was sent, nothing silently dropped
