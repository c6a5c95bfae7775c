"""Retries, Retry-After, fallback chains, circuit breakers and weighted credentials, through
the real gateway against the fake upstream's scripted faults."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, GatewayFactory, chat_body, create_project, wait_for_rows

from gateway.keys import PIPELINE, PRICES
from gateway.pricing import compute_cost
from gateway.providers.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    backoff_delay,
    retry_after_s,
    weighted_order,
)

FALLBACKS = {"fallbacks": {"gpt-4o": ["claude-sonnet-4-5"]}}


class Sleeps:
    """Stands in for asyncio.sleep inside the pipeline: records each pause, waits none."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def _gateway(make_gateway: GatewayFactory, **sections: Any) -> tuple[TestClient, Sleeps,
                                                                           str]:
    client = await make_gateway(**sections)
    sleeps = Sleeps()
    client.app[PIPELINE]._sleep = sleeps
    _, key = await create_project(client)
    return client, sleeps, key


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_500_is_retried_and_the_row_keeps_both_attempts(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, sleeps, key = await _gateway(make_gateway)
    fake_upstream.script({"status": 500})
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 200, await resp.text()
    assert fake_upstream.state.received == 2
    assert len(sleeps.waits) == 1 and 0 <= sleeps.waits[0] <= 0.001  # backoff, jittered
    [row] = await wait_for_rows(client, 1)
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [("openai", 500),
                                                                       ("openai", 200)]
    assert row["attempts"][0]["error_code"] == "upstream_error"
    assert row["status"] == 200 and row["credential"] == "default"


async def test_retries_stop_after_max_retries_and_the_error_names_every_attempt(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, sleeps, key = await _gateway(make_gateway)
    fake_upstream.script({"status": 503}, {"status": 500}, {"status": 502})
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "all_upstreams_failed"
    assert "3 upstream attempts" in error["message"]
    assert fake_upstream.state.received == 3 and len(sleeps.waits) == 2
    [row] = await wait_for_rows(client, 1)
    assert [a["status"] for a in row["attempts"]] == [503, 500, 502]
    assert row["status"] == 502 and row["cost_usd"] == 0


async def test_a_429_waits_for_its_retry_after(make_gateway: GatewayFactory,
                                               fake_upstream: FakeUpstream) -> None:
    client, sleeps, key = await _gateway(make_gateway)
    fake_upstream.script({"status": 429, "retry_after": 3})
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 200
    assert sleeps.waits == [3.0]  # the provider's Retry-After, not the short backoff


async def test_a_retry_after_beyond_the_limit_is_relayed_not_waited(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, sleeps, key = await _gateway(
        make_gateway, providers={"openai": {"retry_after_max_s": 5}})
    fake_upstream.script({"status": 429, "retry_after": 60})
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "60"  # relayed for the client to wait
    assert sleeps.waits == [] and fake_upstream.state.received == 1


async def test_a_client_error_is_not_retried(make_gateway: GatewayFactory,
                                             fake_upstream: FakeUpstream) -> None:
    client, sleeps, key = await _gateway(make_gateway, routing=FALLBACKS)
    fake_upstream.script({"status": 400})
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 400
    assert fake_upstream.state.received == 1 and sleeps.waits == []


async def test_primary_down_the_fallback_serves_and_the_row_says_so(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, _, key = await _gateway(make_gateway, routing=FALLBACKS)
    fake_upstream.script({"status": 500}, {"status": 500}, {"status": 500})
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["choices"][0]["message"]["content"]
    paths = [entry["path"] for entry in fake_upstream.state.log]
    assert paths == ["/v1/chat/completions"] * 3 + ["/v1/messages"]
    [row] = await wait_for_rows(client, 1)
    assert (row["provider"], row["model"], row["requested_model"]) == (
        "anthropic", "claude-sonnet-4-5", "gpt-4o")
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
        ("openai", 500), ("openai", 500), ("openai", 500), ("anthropic", 200)]
    price, _ = client.app[PRICES].resolve("anthropic", "claude-sonnet-4-5")
    from gateway.domain import Usage

    usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"])
    assert row["cost_usd"] == compute_cost(usage, price)  # priced as served
    assert Decimal(resp.headers["X-AI-Cost-Gateway-Cost"]) == row["cost_usd"]


async def test_unreachable_primary_falls_back_when_streaming_too(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, _, key = await _gateway(
        make_gateway, routing=FALLBACKS,
        providers={"openai": {"base_url": "http://127.0.0.1:9/v1", "max_retries": 1}})
    resp = await client.post("/v1/chat/completions", headers=_auth(key), json=chat_body(
        model="gpt-4o", stream=True))
    assert resp.status == 200
    text = await resp.text()
    assert text.endswith("data: [DONE]\n\n") and "chat.completion.chunk" in text
    [row] = await wait_for_rows(client, 1)
    assert [(a["provider"], a["error_code"]) for a in row["attempts"]] == [
        ("openai", "upstream_unreachable"), ("openai", "upstream_unreachable"),
        ("anthropic", None)]
    assert row["provider"] == "anthropic" and row["streamed"]


async def test_all_down_is_a_clear_502(make_gateway: GatewayFactory,
                                       fake_upstream: FakeUpstream) -> None:
    client, _, key = await _gateway(
        make_gateway, routing=FALLBACKS,
        providers={"openai": {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0},
                   "anthropic": {"base_url": "http://127.0.0.1:9", "max_retries": 0}})
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_unreachable"
    assert "unreachable" in error["message"] and "after 2 attempts" in error["message"]


async def test_all_timing_out_is_a_504(make_gateway: GatewayFactory,
                                       fake_upstream: FakeUpstream) -> None:
    client, _, key = await _gateway(
        make_gateway, routing=FALLBACKS,
        providers={"openai": {"first_byte_timeout_s": 0.2},
                   "anthropic": {"first_byte_timeout_s": 0.2}})
    fake_upstream.script({"hang": True}, {"hang": True})
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 504
    assert "after 2 attempts" in (await resp.json())["error"]["message"]
    assert fake_upstream.state.received == 2  # a timeout is not retried on the same provider


async def test_the_breaker_opens_skips_the_provider_and_closes_after_a_probe(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, _, key = await _gateway(
        make_gateway, providers={"openai": {"max_retries": 0, "breaker_failures": 2,
                                            "breaker_cooldown_s": 0.3}})
    fake_upstream.script({"status": 500}, {"status": 500})
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 500
    breaker = client.app[PIPELINE].breakers["openai"]
    assert breaker.state == OPEN
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "circuit_open"
    assert fake_upstream.state.received == 2  # skipped: the provider was not called
    for _ in range(40):  # bounded: the cooldown is 0.3 s
        if breaker.state == HALF_OPEN:
            break
        await asyncio.sleep(0.05)
    assert breaker.state == HALF_OPEN
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 200  # the probe succeeded
    assert breaker.state == CLOSED
    rows = await wait_for_rows(client, 4)
    assert rows[2]["error_code"] == "circuit_open" and rows[2]["attempts"][0]["status"] == 503


async def test_an_open_breaker_sends_calls_straight_to_the_fallback(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, _, key = await _gateway(
        make_gateway, routing=FALLBACKS,
        providers={"openai": {"max_retries": 0, "breaker_failures": 1,
                              "breaker_cooldown_s": 60}})
    fake_upstream.script({"status": 500})
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 200  # openai failed once (breaker opens), anthropic served
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 200
    paths = [entry["path"] for entry in fake_upstream.state.log]
    assert paths == ["/v1/chat/completions", "/v1/messages", "/v1/messages"]


async def test_credentials_are_balanced_by_weight_and_a_refused_key_is_skipped(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    credentials = [{"name": "heavy", "api_key": "sk-heavy", "weight": 3},
                   {"name": "light", "api_key": "sk-light", "weight": 1},
                   {"name": "off", "api_key": "sk-off", "weight": 0}]
    client = await make_gateway(providers={"openai": {"credentials": credentials}})
    _, key = await create_project(client, plan="enterprise")
    for _ in range(80):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 200
    used = [entry["headers"]["Authorization"] for entry in fake_upstream.state.log]
    heavy = used.count("Bearer sk-heavy")
    assert heavy + used.count("Bearer sk-light") == 80
    assert 45 <= heavy <= 75  # 3:1 expects 60; this band is about 4 standard deviations
    rows = await wait_for_rows(client, 80)
    assert {r["credential"] for r in rows} == {"heavy", "light"}

    fake_upstream.state.log.clear()
    fake_upstream.script({"status": 401}, {"status": 401})
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 200  # two keys refused, the third (weight 0, last resort) served
    used = [entry["headers"]["Authorization"] for entry in fake_upstream.state.log]
    assert used[-1] == "Bearer sk-off" and len(set(used)) == 3


async def test_a_budget_reserves_for_the_dearest_model_of_the_chain(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client = await make_gateway(routing={"fallbacks": {"gpt-4o-mini": ["claude-opus-4-1"]}})
    # Enough for gpt-4o-mini's worst case, not for claude-opus-4-1's.
    _, key = await create_project(client, monthly_budget_usd=0.01)
    resp = await client.post("/v1/chat/completions", json=chat_body(max_tokens=1000),
                             headers=_auth(key))
    assert resp.status == 402
    assert fake_upstream.state.received == 0


# -- the pure parts ---------------------------------------------------------------------------

def test_backoff_is_full_jitter_under_a_cap() -> None:
    import random

    rng = random.Random(7)
    for retry in range(8):
        delays = [backoff_delay(retry, 0.5, 4.0, rng) for _ in range(200)]
        assert all(0 <= d <= min(4.0, 0.5 * 2 ** retry) for d in delays)
        assert max(delays) > 0.8 * min(4.0, 0.5 * 2 ** retry)  # the range is used


def test_retry_after_reads_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("7", now) == 7.0
    assert retry_after_s("1.5", now) == 1.5
    assert retry_after_s("Sun, 22 Nov 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_s("Sun, 22 Nov 2026 11:00:00 GMT", now) == 0.0  # in the past
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_breaker_states() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown_s=10, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
    assert breaker.allow() and breaker.state == CLOSED
    breaker.success()  # a success resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.state == CLOSED
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # exactly one probe
    breaker.failure()  # the probe failed: open again, for a full cooldown
    assert breaker.state == OPEN
    now[0] = 20.0
    assert breaker.allow()
    breaker.release()  # the probe's client left: another probe may go
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


@pytest.mark.parametrize("seed", range(3))
def test_weighted_order_follows_weights(seed: int) -> None:
    import random

    rng = random.Random(seed)
    items = [("a", 6), ("b", 3), ("c", 1), ("z", 0)]
    firsts = [weighted_order(items, lambda i: i[1], rng)[0][0] for _ in range(3000)]
    assert abs(firsts.count("a") / 3000 - 0.6) < 0.05
    assert abs(firsts.count("c") / 3000 - 0.1) < 0.03
    assert "z" not in firsts
    order = weighted_order(items, lambda i: i[1], rng)
    assert sorted(order) == sorted(items) and order[-1] == ("z", 0)


async def test_a_fallback_that_refuses_the_request_moves_on_and_the_error_names_all(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    client, _, key = await _gateway(
        make_gateway, providers={"openai": {"max_retries": 0}},
        routing={"fallbacks": {"gpt-4o": ["claude-sonnet-4-5", "gemini-2.5-flash"]}})
    fake_upstream.script({"status": 500}, {"status": 404})  # openai down, anthropic lacks it
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()  # gemini served
    [row] = await wait_for_rows(client, 1)
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
        ("openai", 500), ("anthropic", 404), ("gemini", 200)]
    fake_upstream.script({"status": 500}, {"status": 404}, {"status": 404})
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "all_upstreams_failed" and "3 upstream attempts" in error["message"]
