"""The official `openai` SDK's `client.responses` against a running gateway, for an OpenAI
model (relayed), an Anthropic and a Gemini model (translated): plain, streamed, with function
tools; and the pipeline's refusals (401, 402, 400) in OpenAI's shape."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, away_from_a_minute_edge, create_project, wait_for_rows

from gateway.keys import PRICES
from gateway.pricing import compute_cost

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5",
          "gemini": "gemini-2.5-flash"}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def sdk(gateway: TestClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)


def row_cost(gateway: TestClient, row: Any) -> Decimal:
    from gateway.domain import Usage

    price, _ = gateway.app[PRICES].resolve(row["provider"], row["model"])
    return compute_cost(Usage(input_tokens=row["input_tokens"],
                              cached_input_tokens=row["cached_input_tokens"],
                              output_tokens=row["output_tokens"],
                              cache_write_tokens=row["cache_write_tokens"]), price)


@pytest.mark.parametrize("provider", list(MODELS))
async def test_create(gateway: TestClient, provider: str) -> None:
    _, key = await create_project(gateway)
    raw = await sdk(gateway, key).responses.with_raw_response.create(
        model=MODELS[provider], instructions="You are terse.", input="Name three colours.",
        max_output_tokens=6, metadata={"feature": "colours"})
    response = raw.parse()
    assert response.output_text == "w1 w2 w3 w4 w5 w6"
    assert response.usage is not None and response.usage.output_tokens == 6
    [row] = await wait_for_rows(gateway, 1)
    assert (row["provider"], row["endpoint"], row["status"]) == (provider, "/v1/responses", 200)
    assert (row["input_tokens"], row["output_tokens"]) == (response.usage.input_tokens, 6)
    assert row["metadata"] == {"feature": "colours"}
    assert Decimal(raw.headers["x-ai-cost-gateway-cost"]) == row["cost_usd"] == row_cost(
        gateway, row) > 0


@pytest.mark.parametrize("provider", list(MODELS))
async def test_stream(gateway: TestClient, provider: str) -> None:
    _, key = await create_project(gateway)
    stream = await sdk(gateway, key).responses.create(
        model=MODELS[provider], input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Say hello"}]}], max_output_tokens=50, stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response  # type: ignore[union-attr]
    assert text == completed.output_text == " ".join(f"w{i}" for i in range(1, 13))
    [row] = await wait_for_rows(gateway, 1)
    assert completed.usage is not None
    assert (row["streamed"], row["input_tokens"], row["output_tokens"]) == (
        True, completed.usage.input_tokens, completed.usage.output_tokens)
    assert row["cost_usd"] == row_cost(gateway, row) > 0


@pytest.mark.parametrize("provider", list(MODELS))
async def test_function_tools_round_trip(gateway: TestClient, fake_upstream: FakeUpstream,
                                         provider: str) -> None:
    _, key = await create_project(gateway)
    client = sdk(gateway, key)
    asked = [{"role": "user", "content": "Please use tool for Paris"}]
    async with client.responses.stream(model=MODELS[provider], input=asked,  # type: ignore[arg-type]
                                       tools=[WEATHER]) as stream:  # type: ignore[list-item]
        first = await stream.get_final_response()
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, orjson.loads(call.arguments)) == ("get_weather", {"city": "fake"})
    follow = [*asked, {"type": "function_call", "call_id": call.call_id, "name": call.name,
                       "arguments": call.arguments},
              {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = await client.responses.create(model=MODELS[provider], input=follow,  # type: ignore[arg-type]
                                           tools=[WEATHER], tool_choice="none")  # type: ignore[list-item]
    assert second.output_text
    rows = await wait_for_rows(gateway, 2)
    assert [r["endpoint"] for r in rows] == ["/v1/responses"] * 2


async def test_a_missing_or_wrong_key_is_401(gateway: TestClient) -> None:
    resp = await gateway.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, "sk-wrong").responses.create(model="gpt-4o-mini", input="hi")


async def test_over_budget_is_402(gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway, monthly_budget_usd="0.000001")
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(gateway, key).responses.create(model="claude-sonnet-4-5", input="hi",
                                                 max_output_tokens=1000)
    assert caught.value.status_code == 402
    assert caught.value.code == "budget_exceeded"
    assert fake_upstream.state.received == 0
    [row] = await wait_for_rows(gateway, 1)
    assert (row["status"], row["endpoint"]) == (402, "/v1/responses")


async def test_untranslatable_feature_is_400(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(gateway, key).responses.create(
            model="gemini-2.5-flash", input="hi", previous_response_id="resp_1")
    assert caught.value.code == "untranslatable_feature"
    assert "previous_response_id" in caught.value.message


async def test_stored_responses_are_reached_on_openai(gateway: TestClient,
                                                      fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    client = sdk(gateway, key)
    created = await client.responses.create(model="gpt-4o-mini", input="Say hello")
    fetched = await client.responses.retrieve(created.id)
    assert (fetched.id, fetched.output_text) == (created.id, created.output_text)
    items = await client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    assert [(r["method"], r["path"]) for r in fake_upstream.state.log] == [
        ("POST", "/v1/responses"), ("GET", f"/v1/responses/{created.id}"),
        ("GET", f"/v1/responses/{created.id}/input_items"),
        ("DELETE", f"/v1/responses/{created.id}"), ("GET", f"/v1/responses/{created.id}")]
    rows = await wait_for_rows(gateway, 5)
    assert [(r["endpoint"], r["status"], r["cost_usd"]) for r in rows[1:]] == [
        (f"/v1/responses/{created.id}", 200, 0),
        (f"/v1/responses/{created.id}/input_items", 200, 0),
        (f"/v1/responses/{created.id}", 200, 0), (f"/v1/responses/{created.id}", 404, 0)]


async def test_stored_responses_keep_to_the_allow_list(gateway: TestClient,
                                                       fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway, allowed_providers=["anthropic"])
    with pytest.raises(openai.PermissionDeniedError):
        await sdk(gateway, key).responses.retrieve("resp_1")
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, "sk-wrong").responses.retrieve("resp_1")
    assert fake_upstream.state.received == 0


async def test_stored_responses_are_held_to_rate_limits_and_request_ids(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    """A read or delete of a stored response is a call like the others: it counts against the
    plan's requests per minute (429 past it, with the rate headers) and claims its
    X-Request-Id (409 on reuse); the budget guard reserves nothing for it."""
    await away_from_a_minute_edge(5)
    _, key = await create_project(gateway, requests_per_minute=4, monthly_budget_usd="1")
    client = sdk(gateway, key)
    created = await client.responses.create(model="gpt-4o-mini", input="Say hello")
    raw = await client.responses.with_raw_response.retrieve(
        created.id, extra_headers={"X-Request-Id": "read-1"})
    assert (raw.headers["x-ratelimit-limit"], raw.headers["x-ratelimit-remaining"]) == ("4", "2")
    with pytest.raises(openai.ConflictError) as reused:
        await client.responses.retrieve(created.id, extra_headers={"X-Request-Id": "read-1"})
    assert reused.value.code == "duplicate_request_id"
    await client.responses.input_items.list(created.id)
    await client.responses.delete(created.id)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.retrieve(created.id)
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert fake_upstream.state.received == 4
    rows = await wait_for_rows(gateway, 6)
    assert sorted(r["status"] for r in rows) == [200, 200, 200, 200, 409, 429]
