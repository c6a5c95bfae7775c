"""The smart router (issue 16): `POST /api/smart-router`, `router:*` and `[routing.routes]`
in the proxy, through the real gateway against fake upstreams whose delays and failures are
scripted."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from conftest import (
    TEST_PROVIDER_KEY,
    FakeUpstream,
    GatewayFactory,
    admin_headers,
    chat_body,
    create_project,
    wait_for_rows,
)

from gateway.domain import Usage
from gateway.keys import OBSERVED, PIPELINE, PRICES
from gateway.pricing import compute_cost
from gateway.settings import PROJECT_ROOT, TASK_CLASSES
from gateway.testing.fake_behaviour import STATE
from gateway.testing.fake_upstream import start_fake_upstream

SECRET = "correct horse battery staple, 32+ characters long"
TIERS = {"low": 1, "medium": 2, "high": 3}

# Written from the seed's example answer (meterr-api-reference.md, POST /api/smart-router):
# every field it shows, with its type; alternatives carry model, provider and cost.
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["recommended_model", "provider", "estimated_cost", "estimated_latency",
                 "alternatives"],
    "properties": {
        "recommended_model": {"type": "string", "minLength": 1},
        "provider": {"type": "string", "minLength": 1},
        "estimated_cost": {"type": "number", "minimum": 0},
        "estimated_latency": {"type": "number", "minimum": 0},
        "latency_source": {"enum": ["observed", "catalogue"]},
        "alternatives": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["model", "provider", "cost"],
                "properties": {"model": {"type": "string"}, "provider": {"type": "string"},
                               "cost": {"type": "number", "minimum": 0}},
            },
        },
    },
}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _keyed(**providers: dict[str, Any]) -> dict[str, Any]:
    """Every provider with a key (the fakes' OpenAI has none, reachable all the same at a
    host of one's own), plus overrides."""
    return {"openai": {"api_key": TEST_PROVIDER_KEY}, **providers}


def _expected_cheapest(task: str, quality: str, input_tokens: int, output_tokens: int,
                       prices: Any) -> str:
    """Brute force over the catalogue file itself: the cheapest model of at least `quality`
    for `task` (ties by the router's order: latency prior, then name)."""
    raw = tomllib.loads((PROJECT_ROOT / "config" / "models.toml").read_text())["models"]
    best: list[tuple[Decimal, float, str]] = []
    for name, entry in raw.items():
        if TIERS[entry["quality"][task]] < TIERS[quality]:
            continue
        cost = compute_cost(Usage(input_tokens=input_tokens, output_tokens=output_tokens),
                            prices.get(name))
        latency = entry["latency"]
        total = (latency["first_token_ms"]
                 + output_tokens * 1000.0 / latency["output_tokens_per_s"])
        best.append((cost, total, name))
    return min(best)[2]


@pytest.fixture
async def slow_upstream() -> AsyncIterator[FakeUpstream]:
    """A second fake provider server, 60 ms slower than the first."""
    runner, url = await start_fake_upstream(delay_ms=60)
    yield FakeUpstream(url, runner.app[STATE], runner)
    await runner.cleanup()


# -- the endpoint --------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASK_CLASSES)
async def test_the_cheapest_qualifying_model_is_recommended_for_each_task_class(
        make_gateway: GatewayFactory, task: str) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client)
    body = {"task": task, "quality": "high", "strategy": "cheapest", "input_tokens": 2000,
            "output_tokens": 300}
    resp = await client.post("/api/smart-router", json=body, headers=_auth(key))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    jsonschema.validate(answer, ANSWER_SCHEMA)
    prices = client.app[PRICES]
    assert answer["recommended_model"] == _expected_cheapest(task, "high", 2000, 300, prices)
    price = prices.get(answer["recommended_model"])
    assert price is not None
    assert Decimal(str(answer["estimated_cost"])) == compute_cost(
        Usage(input_tokens=2000, output_tokens=300), price)
    assert answer["latency_source"] == "catalogue"  # nothing observed yet
    costs = [Decimal(str(a["cost"])) for a in answer["alternatives"]]
    assert costs == sorted(costs) and costs[0] >= Decimal(str(answer["estimated_cost"]))
    assert all(a["quality"] == "high" for a in answer["alternatives"])


async def test_the_seed_example_request_answers_in_the_seed_shape(
        make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client)
    body = {"task": "code_generation", "max_cost": 0.05, "max_latency": 20000,
            "quality": "high"}
    resp = await client.post("/api/smart-router", json=body, headers=_auth(key))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    jsonschema.validate(answer, ANSWER_SCHEMA)
    assert answer["estimated_cost"] <= 0.05 and answer["estimated_latency"] <= 20000
    assert answer["strategy"] == "balanced" and answer["input_tokens"] == 1000
    assert answer["recommended_model"] not in {a["model"] for a in answer["alternatives"]}


async def test_messages_are_counted_exactly_for_the_cost(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed(), routing={})
    _, key = await create_project(client, allowed_models=["gpt-4o-mini"])
    messages = [{"role": "user", "content": "Say hello to the whole wide world, please."}]
    resp = await client.post("/api/tokens/count", json={"model": "gpt-4o-mini",
                                                        "messages": messages},
                             headers=_auth(key))
    counted = (await resp.json())["tokens"]
    resp = await client.post("/api/smart-router", json={"messages": messages,
                                                        "output_tokens": 10, "quality": "low"},
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["recommended_model"] == "gpt-4o-mini"
    assert answer["input_tokens"] == counted and answer["output_tokens"] == 10


async def test_allow_lists_exclude_models(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client, allowed_providers=["anthropic"])
    resp = await client.post("/api/smart-router", json={"task": "chat"}, headers=_auth(key))
    answer = await resp.json()
    assert answer["provider"] == "anthropic"
    assert {a["provider"] for a in answer["alternatives"]} == {"anthropic"}
    _, key = await create_project(client, allowed_models=["gpt-4.1*"])
    resp = await client.post("/api/smart-router", json={"quality": "low"}, headers=_auth(key))
    answer = await resp.json()
    assert {answer["recommended_model"], *(a["model"] for a in answer["alternatives"])} == {
        "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"}


async def test_missing_credentials_exclude_a_provider_until_the_project_stores_one(
        make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed(anthropic={
        "api_key": "", "base_url": "https://api.anthropic.com"}), secrets={"key": SECRET})
    project, key = await create_project(client)
    body = {"task": "chat", "strategy": "cheapest", "quality": "low"}
    resp = await client.post("/api/smart-router", json=body, headers=_auth(key))
    answer = await resp.json()
    providers = {answer["provider"], *(a["provider"] for a in answer["alternatives"])}
    assert "anthropic" not in providers and "openai" in providers
    resp = await client.put(f"/api/admin/projects/{project['id']}/providers/anthropic",
                            json={"api_key": "sk-ant-own"}, headers=admin_headers())
    assert resp.status in (200, 201), await resp.text()
    resp = await client.post("/api/smart-router", json=body, headers=_auth(key))
    answer = await resp.json()
    assert "anthropic" in {answer["provider"], *(a["provider"] for a in answer["alternatives"])}


async def test_nothing_meets_the_constraints_422_names_the_closest(
        make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client)
    body = {"task": "reasoning", "quality": "high", "max_cost": 0.00001,
            "input_tokens": 5000, "output_tokens": 2000}
    resp = await client.post("/api/smart-router", json=body, headers=_auth(key))
    assert resp.status == 422
    error = await resp.json()
    assert error["details"]["closest"] and len(error["details"]["closest"]) <= 3
    assert "max_cost" in error["error"]
    for candidate in error["details"]["closest"]:
        assert any("max_cost" in p for p in candidate["problems"])


async def test_a_bad_request_names_every_field(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client)
    body = {"task": "poetry", "max_latency": "fast", "quality": "best", "requires": ["wings"],
            "input_tokens": -1, "bogus": 1}
    resp = await client.post("/api/smart-router", json=body, headers=_auth(key))
    assert resp.status == 400
    fields = {e["field"] for e in (await resp.json())["details"]["errors"]}
    assert fields == {"task", "max_latency", "quality", "requires[0]", "input_tokens", "bogus"}


async def test_requirements_filter_capabilities(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client, allowed_providers=["anthropic", "cohere"])
    body = {"quality": "low", "requires": ["image_input"], "strategy": "cheapest"}
    resp = await client.post("/api/smart-router", json=body, headers=_auth(key))
    answer = await resp.json()
    models = {answer["recommended_model"], *(a["model"] for a in answer["alternatives"])}
    assert models == {"claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"}


# -- routing in the proxy -------------------------------------------------------------------

async def test_router_cheapest_serves_the_pick_and_the_row_says_why(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client)
    resp = await client.post("/v1/chat/completions", json=chat_body(model="router:cheapest",
                                                                    max_tokens=50),
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()
    chosen = resp.headers["X-AI-Cost-Gateway-Model"]
    reason = resp.headers["X-AI-Cost-Gateway-Route-Reason"]
    assert reason.startswith("cheapest: ") and chosen in reason
    assert fake_upstream.state.log[-1]["body"]["model"] == chosen
    assert (await resp.json())["model"] == chosen
    [row] = await wait_for_rows(client, 1)
    assert (row["requested_model"], row["model"], row["route_reason"]) == (
        "router:cheapest", chosen, reason)
    # the pick: the cheapest chat model of the default tier (medium) for this request
    counted = (await client.app[PIPELINE].tokens.count_chat(chat_body(), chosen)).tokens
    assert chosen == _expected_cheapest("chat", "medium", counted, 50, client.app[PRICES])


async def test_an_unknown_strategy_and_a_non_chat_endpoint_are_refused(
        make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client)
    resp = await client.post("/v1/chat/completions", json=chat_body(model="router:smartest"),
                             headers=_auth(key))
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "unknown_router_strategy"
    resp = await client.post("/v1/embeddings", json={"model": "router:cheapest",
                                                     "input": "hi"}, headers=_auth(key))
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "router_not_supported"


FAST_CHAT = {"routes": {"fast-chat": {"strategy": "fastest", "quality": "low",
                                      "models": ["gpt-4o-mini", "claude-3-5-haiku"]}},
             "min_samples": 3}


async def _pick(client: TestClient, key: str) -> str:
    resp = await client.post("/v1/chat/completions", json=chat_body(model="fast-chat"),
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()
    return resp.headers["X-AI-Cost-Gateway-Model"]


async def test_a_slow_provider_stops_being_picked_within_the_window(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream,
        slow_upstream: FakeUpstream) -> None:
    host = slow_upstream.url.removesuffix("/v1")
    client = await make_gateway(providers=_keyed(anthropic={"base_url": host}),
                                routing=FAST_CHAT)
    _, key = await create_project(client)
    for model in ("gpt-4o-mini", "claude-3-5-haiku") * 3:  # other traffic, observed
        resp = await client.post("/v1/chat/completions", json=chat_body(model=model),
                                 headers=_auth(key))
        assert resp.status == 200
    assert await _pick(client, key) == "gpt-4o-mini"  # ~0 ms against ~60 ms
    fake_upstream.script(*[{"delay_ms": 150}] * 20)  # OpenAI's server slows down
    picks = [await _pick(client, key) for _ in range(8)]
    # 4 fast samples in the window: the 5th slow one makes slow the median (p50), and the
    # router moves to Anthropic's ~60 ms at once, for good
    assert picks == ["gpt-4o-mini"] * 5 + ["claude-3-5-haiku"] * 3
    stats = client.app[OBSERVED].stats("openai", "gpt-4o-mini")
    assert stats is not None and stats.total_p50_ms is not None and stats.total_p50_ms >= 150
    resp = await client.post("/api/smart-router", json={"strategy": "fastest", "quality": "low"},
                             headers=_auth(key))
    answer = await resp.json()
    jsonschema.validate(answer, ANSWER_SCHEMA)
    assert (answer["recommended_model"], answer["latency_source"]) == (
        "claude-3-5-haiku", "observed")
    assert 60 <= answer["first_token_latency"] <= answer["estimated_latency"] < 150
    [slow] = [a for a in answer["alternatives"] if a["model"] == "gpt-4o-mini"]
    assert slow["latency_source"] == "observed" and slow["estimated_latency"] >= 150


async def test_a_failing_provider_falls_back_then_is_skipped(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream,
        slow_upstream: FakeUpstream) -> None:
    host = slow_upstream.url.removesuffix("/v1")
    client = await make_gateway(providers=_keyed(anthropic={"base_url": host}),
                                routing=FAST_CHAT)
    _, key = await create_project(client)
    fake_upstream.script(*[{"status": 500}] * 3)  # every try of gpt-4o-mini fails
    resp = await client.post("/v1/chat/completions", json=chat_body(model="fast-chat"),
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()
    [row] = await wait_for_rows(client, 1)
    assert row["model"] == "claude-3-5-haiku" and row["requested_model"] == "fast-chat"
    assert [(a["model"], a["status"]) for a in row["attempts"]] == [
        ("gpt-4o-mini", 500)] * 3 + [("claude-3-5-haiku", 200)]
    assert "gpt-4o-mini" in row["route_reason"]  # the pick, before the fallback served
    received = fake_upstream.state.received
    assert await _pick(client, key) == "claude-3-5-haiku"  # 3 of 3 failed: skipped
    assert fake_upstream.state.received == received


async def test_observations_are_seeded_from_the_ledger_at_start(
        make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client)
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 200
    await wait_for_rows(client, 3)
    fresh = await make_gateway(providers=_keyed())
    observed = fresh.app[OBSERVED]
    stats = observed.stats("openai", "gpt-4o-mini")
    for _ in range(100):
        if stats is not None:
            break
        await asyncio.sleep(0.02)
        stats = observed.stats("openai", "gpt-4o-mini")
    assert stats is not None and stats.samples == 3 and stats.errors == 0


# -- load balancing across one provider's credentials ---------------------------------------

def _two_credentials(bad_url: str, good_url: str, **extra: Any) -> dict[str, Any]:
    return {"openai": {"max_retries": 0, "breaker_failures": 2, **extra, "credentials": [
        {"name": "first", "api_key": "k1", "base_url": bad_url},
        {"name": "second", "api_key": "k2", "base_url": good_url}]}}


async def test_a_failing_credential_is_skipped_until_its_breaker_closes(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream,
        slow_upstream: FakeUpstream) -> None:
    client = await make_gateway(providers=_two_credentials(slow_upstream.url,
                                                           fake_upstream.url))
    _, key = await create_project(client)
    slow_upstream.script(*[{"status": 503}] * 50)
    # The default (weighted) order puts the failing credential first in half the calls, at
    # random: call until it has failed twice. (A fixed 12 calls fell short in about one run
    # of 300; 200 calls, in about one of 2**190.)
    sent = 0
    for _ in range(200):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 200, await resp.text()
        sent += 1
        if slow_upstream.state.received == 2:
            break
    assert slow_upstream.state.received == 2  # its breaker opened at the second failure
    for _ in range(10):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 200, await resp.text()
    assert slow_upstream.state.received == 2  # skipped while its breaker is open
    assert fake_upstream.state.received == sent + 10


async def test_latency_aware_balancing_sends_the_traffic_to_the_faster_deployment(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream,
        slow_upstream: FakeUpstream) -> None:
    client = await make_gateway(providers=_two_credentials(slow_upstream.url,
                                                           fake_upstream.url),
                                routing={"balancing": {"gpt-4o-mini": "latency"}})
    _, key = await create_project(client)
    for _ in range(20):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 200
    # one call each at most to measure them, then always the lower EWMA of the two
    assert slow_upstream.state.received <= 1 and fake_upstream.state.received >= 19


async def test_a_routed_stream_and_a_routed_anthropic_call_say_which_model_served(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client = await make_gateway(providers=_keyed())
    _, key = await create_project(client, allowed_models=["claude-haiku-4-5", "gpt-4.1-mini"])
    resp = await client.post("/v1/chat/completions",
                             json=chat_body(model="router:fastest", stream=True,
                                            max_tokens=20),
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    served = resp.headers["X-AI-Cost-Gateway-Model"]
    # priors for 20 output tokens: 450 ms + 20 at 100/s = 650 ms, against 600 + 20 at 110/s
    assert served == "gpt-4.1-mini"
    assert f'"model":"{served}"' in text.replace(" ", "") and "x-ai-cost-gateway-cost" in text
    resp = await client.post("/v1/messages", json={
        "model": "router:cheapest", "max_tokens": 40,
        "messages": [{"role": "user", "content": "Say hello"}]}, headers=_auth(key))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["type"] == "message" and answer["model"] == "gpt-4.1-mini"  # $0.40/$1.60
    rows = await wait_for_rows(client, 2)
    assert [(r["requested_model"], r["model"], r["streamed"]) for r in rows] == [
        ("router:fastest", "gpt-4.1-mini", True), ("router:cheapest", "gpt-4.1-mini", False)]


async def test_a_route_whose_constraints_nothing_meets_answers_422_in_openai_shape(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client = await make_gateway(providers=_keyed(), routing={"routes": {"tight": {
        "strategy": "cheapest", "task": "reasoning", "quality": "high",
        "max_cost_usd": 0.000001}}})
    _, key = await create_project(client)
    resp = await client.post("/v1/chat/completions", json=chat_body(model="tight"),
                             headers=_auth(key))
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "no_model_fits" and "max_cost 0.000001" in error["message"]
    assert fake_upstream.state.received == 0
    [row] = await wait_for_rows(client, 1)
    assert (row["status"], row["model"], row["route_reason"]) == (422, "tight", None)
