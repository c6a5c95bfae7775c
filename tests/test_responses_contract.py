"""The Responses entry (`POST /v1/responses`) x every provider, JSON and SSE.

OpenAI's own API gets the client's Responses body as it is and its answer relayed; every other
provider gets the request translated through the chat pivot and its answer encoded back into a
Responses object or stream. Checked every time: the text or function call the client sees, the
usage it sees = the usage row = what the fake provider billed for the body it received, and
the cost (header or stream cost line) = the row = the price arithmetic; the row's endpoint.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, create_project, wait_for_rows
from test_providers_contract import (
    MODELS,
    REPLY,
    TOOL_ARGS,
    WEATHER_TOOL,
    _usage,
    billed_input,
    contract_gateway,  # noqa: F401  (a fixture)
    parse_sse,
)

from gateway.keys import PRICES
from gateway.pricing import compute_cost
from gateway.testing import fake_openai_responses


def responses_body(provider: str, *, stream: bool, tools: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODELS[provider][0], "instructions": "You are terse.",
        "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Please use tool for Paris" if tools
             else "Say hello"}]}],
        "max_output_tokens": 200, "metadata": {"team": "search"}}
    if tools:
        body["tools"] = [{"type": "function", "name": WEATHER_TOOL["name"],
                          "description": WEATHER_TOOL["description"],
                          "parameters": WEATHER_TOOL["schema"]}]
    if stream:
        body["stream"] = True
    return body


def billed(provider: str, upstream_body: dict[str, Any]) -> int:
    if provider == "openai":  # the Responses body itself
        messages = fake_openai_responses.as_messages(upstream_body)
        return fake_openai_responses.count_prompt_tokens(messages)
    return billed_input(provider, upstream_body)


def seen_response(response: dict[str, Any]) -> tuple[str, list[tuple[str, Any]], dict[str, Any]]:
    """(text, function calls, usage) of a response object."""
    assert response["object"] == "response" and response["status"] == "completed"
    text, calls = "", []
    for item in response["output"]:
        if item["type"] == "message":
            text += "".join(part["text"] for part in item["content"])
        elif item["type"] == "function_call":
            calls.append((item["name"], orjson.loads(item["arguments"])))
            assert item["call_id"]
    return text, calls, response["usage"]


def seen_stream(events: list[tuple[str | None, Any]]) -> tuple[str, list[tuple[str, Any]],
                                                               dict[str, Any]]:
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"], names
    assert names[-1] == "response.completed", names
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    text, arguments = "", ""
    for name, data in events:
        assert data["type"] == name
        if name == "response.output_text.delta":
            text += data["delta"]
        elif name == "response.function_call_arguments.delta":
            arguments += data["delta"]
    kinds = [n for n in names if n.startswith("response.output_item")]
    assert kinds and len(kinds) % 2 == 0  # every item added is done
    if "response.output_text.delta" in names:
        order = ["response.output_item.added", "response.content_part.added",
                 "response.output_text.delta", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"]
        assert [n for n in dict.fromkeys(names) if n in order] == order
    final_text, calls, usage = seen_response(events[-1][1]["response"])
    assert final_text == text
    if calls:
        assert orjson.loads(arguments) == calls[0][1]
    return text, calls, usage


async def call(client: TestClient, key: str, provider: str, *, stream: bool,
               tools: bool) -> tuple[str, list[tuple[str, Any]], dict[str, Any], Decimal]:
    resp = await client.post("/v1/responses",
                             json=responses_body(provider, stream=stream, tools=tools),
                             headers={"Authorization": f"Bearer {key}"})
    raw = await resp.read()
    assert resp.status == 200, raw[:500]
    if stream:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events, cost = parse_sse(raw)
        assert cost is not None
        return (*seen_stream(events), cost)
    return (*seen_response(orjson.loads(raw)), Decimal(resp.headers["X-AI-Cost-Gateway-Cost"]))


PROVIDERS = ["openai", "anthropic", "gemini", "mistral", "cohere", "azure", "local"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_text_usage_and_cost(contract_gateway: TestClient,  # noqa: F811
                                   fake_upstream: FakeUpstream, provider: str,
                                   stream: bool) -> None:
    _, key = await create_project(contract_gateway)
    text, calls, usage, cost = await call(contract_gateway, key, provider, stream=stream,
                                          tools=False)
    assert (text, calls) == (REPLY, [])
    logged = fake_upstream.state.log[-1]
    assert logged["path"].endswith("/responses") == (provider == "openai")
    [row] = await wait_for_rows(contract_gateway, 1)
    assert (row["provider"], row["status"], row["endpoint"]) == (provider, 200, "/v1/responses")
    assert (row["input_source"], row["output_source"]) == ("provider", "provider")
    assert row["input_tokens"] == billed(provider, logged["body"]) > 0
    assert row["output_tokens"] == 12
    assert (usage["input_tokens"], usage["output_tokens"]) == (row["input_tokens"], 12)
    price, _ = contract_gateway.app[PRICES].resolve(provider, row["model"])
    assert row["cost_usd"] == compute_cost(_usage(row), price) == cost > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_function_calls(contract_gateway: TestClient,  # noqa: F811
                              fake_upstream: FakeUpstream, provider: str, stream: bool) -> None:
    _, key = await create_project(contract_gateway)
    _, calls, usage, cost = await call(contract_gateway, key, provider, stream=stream,
                                       tools=True)
    assert calls == [(WEATHER_TOOL["name"], TOOL_ARGS)]
    [row] = await wait_for_rows(contract_gateway, 1)
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        row["input_tokens"], row["output_tokens"])
    price, _ = contract_gateway.app[PRICES].resolve(provider, row["model"])
    assert row["cost_usd"] == compute_cost(_usage(row), price) == cost > 0


async def test_openai_relays_the_body_as_the_client_wrote_it(
        contract_gateway: TestClient, fake_upstream: FakeUpstream) -> None:  # noqa: F811
    _, key = await create_project(contract_gateway)
    body = {"model": "gpt-4o-mini", "input": "Say hello", "previous_response_id": "resp_x",
            "tools": [{"type": "web_search"}], "store": True, "include": ["usage.extra"]}
    resp = await contract_gateway.post("/v1/responses", json=body,
                                       headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    assert fake_upstream.state.log[-1]["body"] == body


@pytest.mark.parametrize("feature", [
    {"previous_response_id": "resp_123"}, {"tools": [{"type": "web_search"}]},
    {"background": True}])
async def test_what_only_openai_takes_is_untranslatable_elsewhere(
        contract_gateway: TestClient, fake_upstream: FakeUpstream,  # noqa: F811
        feature: dict[str, Any]) -> None:
    _, key = await create_project(contract_gateway)
    body = {"model": "claude-sonnet-4-5", "input": "Say hello", **feature}
    resp = await contract_gateway.post("/v1/responses", json=body,
                                       headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "untranslatable_feature"
    name = next(iter(feature))
    assert name in error["message"] or "web_search" in error["message"]
    assert fake_upstream.state.received == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_an_answer_without_usage_is_counted_never_free(
        contract_gateway: TestClient, fake_upstream: FakeUpstream,  # noqa: F811
        provider: str, stream: bool) -> None:
    _, key = await create_project(contract_gateway)
    fake_upstream.script({"no_usage": True})
    resp = await contract_gateway.post(
        "/v1/responses", json=responses_body(provider, stream=stream, tools=False),
        headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    await resp.read()
    [row] = await wait_for_rows(contract_gateway, 1)
    kind = "counted" if provider == "openai" else "estimated"
    assert (row["input_source"], row["output_source"]) == (kind, kind)
    assert row["input_tokens"] > 0 and row["output_tokens"] >= 12 and row["cost_usd"] > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_stream_cut_upstream_ends_with_an_error_event_and_charges_what_was_sent(
        contract_gateway: TestClient, fake_upstream: FakeUpstream,  # noqa: F811
        provider: str) -> None:
    _, key = await create_project(contract_gateway)
    fake_upstream.script({"stream_cut_after": 4})
    resp = await contract_gateway.post(
        "/v1/responses", json=responses_body(provider, stream=True, tools=False),
        headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200  # the stream had begun
    events, _ = parse_sse(await resp.read())
    name, last = events[-1]
    assert name == last["type"] == "error" and last["code"].startswith("upstream")
    assert "response.output_text.delta" in [n for n, _ in events]
    [row] = await wait_for_rows(contract_gateway, 1)
    assert (row["status"], row["endpoint"]) == (502, "/v1/responses")
    assert row["output_tokens"] > 0 and row["cost_usd"] > 0  # what was streamed is charged
