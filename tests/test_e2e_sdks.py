"""The official SDKs across providers: the `openai` SDK calling Anthropic and Gemini models,
the `anthropic` SDK calling an OpenAI model (and Anthropic itself), streamed and not, through
a running gateway to the fake upstream speaking each provider's wire."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import openai
import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, create_project, wait_for_rows

from gateway.domain import Usage
from gateway.keys import PRICES
from gateway.pricing import compute_cost

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours."}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def openai_sdk(gateway: TestClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)


def anthropic_sdk(gateway: TestClient, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), api_key=key,
                                    max_retries=0)


async def _row_cost(gateway: TestClient) -> tuple[dict[str, object], Decimal]:
    [row] = await wait_for_rows(gateway, 1)
    price, _ = gateway.app[PRICES].resolve(str(row["provider"]), str(row["model"]))
    usage = Usage(input_tokens=row["input_tokens"], cached_input_tokens=row["cached_input_tokens"],
                  output_tokens=row["output_tokens"],
                  cache_write_tokens=row["cache_write_tokens"])
    assert row["cost_usd"] == compute_cost(usage, price) > 0
    return dict(row), row["cost_usd"]


@pytest.mark.parametrize(("model", "provider"), [("claude-sonnet-4-5", "anthropic"),
                                                 ("gemini-2.5-flash", "gemini")])
async def test_openai_sdk_completion_from_another_provider(
        gateway: TestClient, fake_upstream: FakeUpstream, model: str, provider: str) -> None:
    _, key = await create_project(gateway)
    async with openai_sdk(gateway, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=MESSAGES, max_tokens=6)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content == "w1 w2 w3 w4 w5 w6"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    row, cost = await _row_cost(gateway)
    assert row["provider"] == provider
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        row["input_tokens"], 6)
    assert Decimal(raw.headers["x-ai-cost-gateway-cost"]) == cost
    assert fake_upstream.state.log[-1]["path"] != "/v1/chat/completions"  # really translated


@pytest.mark.parametrize(("model", "provider"), [("claude-sonnet-4-5", "anthropic"),
                                                 ("gemini-2.5-flash", "gemini")])
async def test_openai_sdk_stream_from_another_provider(
        gateway: TestClient, model: str, provider: str) -> None:
    _, key = await create_project(gateway)
    text, finish, usages = "", None, []
    async with openai_sdk(gateway, key) as client:
        stream = await client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usages.append(chunk.usage)
    assert text == " ".join(f"w{i}" for i in range(1, 13)) and finish == "stop"
    row, _ = await _row_cost(gateway)
    assert row["provider"] == provider and row["streamed"]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == [
        (row["input_tokens"], 12)]


async def test_openai_sdk_tool_call_through_anthropic(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    async with openai_sdk(gateway, key) as client:
        completion = await client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "use tool: Paris"}],
            tools=[{"type": "function", "function": {"name": "get_weather",
                                                     "parameters": WEATHER}}])
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city":"fake"}'  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
async def test_anthropic_sdk_message(gateway: TestClient, fake_upstream: FakeUpstream,
                                     model: str) -> None:
    _, key = await create_project(gateway)
    async with anthropic_sdk(gateway, key) as client:
        raw = await client.messages.with_raw_response.create(
            model=model, max_tokens=5, system="You are terse.",
            messages=[{"role": "user", "content": "Name three colours."}])
        message = await raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == "w1 w2 w3 w4 w5"
    assert message.stop_reason == "max_tokens"
    row, cost = await _row_cost(gateway)
    assert row["provider"] == ("openai" if model.startswith("gpt") else "anthropic")
    assert message.usage.input_tokens == row["input_tokens"]
    assert message.usage.output_tokens == 5
    assert Decimal(raw.headers["x-ai-cost-gateway-cost"]) == cost
    expected_path = "/v1/chat/completions" if model.startswith("gpt") else "/v1/messages"
    assert fake_upstream.state.log[-1]["path"] == expected_path


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
async def test_anthropic_sdk_stream(gateway: TestClient, model: str) -> None:
    _, key = await create_project(gateway)
    async with anthropic_sdk(gateway, key) as client, client.messages.stream(
            model=model, max_tokens=100,
            messages=[{"role": "user", "content": "Name three colours."}]) as stream:
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert "".join(texts) == " ".join(f"w{i}" for i in range(1, 13))
    assert message.stop_reason == "end_turn"
    row, _ = await _row_cost(gateway)
    assert row["streamed"]
    assert message.usage.output_tokens == row["output_tokens"] == 12
    assert message.usage.input_tokens == row["input_tokens"]


async def test_anthropic_sdk_tool_use_through_openai(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    async with anthropic_sdk(gateway, key) as client:
        message = await client.messages.create(
            model="gpt-4o-mini", max_tokens=100,
            messages=[{"role": "user", "content": "use tool: Paris"}],
            tools=[{"name": "get_weather", "input_schema": WEATHER}])  # type: ignore[list-item]
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "fake"}
    assert message.stop_reason == "tool_use"


async def test_anthropic_sdk_errors_are_anthropic_errors(gateway: TestClient) -> None:
    async with anthropic_sdk(gateway, "gw_wrongkey00_nope") as client:
        with pytest.raises(anthropic.AuthenticationError) as info:
            await client.messages.create(model="gpt-4o-mini", max_tokens=5,
                                         messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["type"] == "error"  # type: ignore[index]
    _, key = await create_project(gateway)
    async with anthropic_sdk(gateway, key) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(
                model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                thinking={"type": "enabled", "budget_tokens": 1024})
    assert "thinking" in str(bad.value)  # named, not silently dropped
