"""Budgets, rate limits and idempotency through the proxy (one gateway, memory limits)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from aiohttp.test_utils import TestClient
from conftest import (
    FakeUpstream,
    GatewayFactory,
    admin_headers,
    away_from_a_minute_edge,
    chat_body,
    create_project,
    wait_for_rows,
)

from gateway.domain import Usage
from gateway.keys import BUDGETS, LIMITER, POOL, PRICES, TOKENS
from gateway.pipeline.budget import BudgetGuard
from gateway.pipeline.ratelimit import TOKENS_WINDOW
from gateway.pricing import PriceTable, compute_cost
from gateway.ratelimit import Window
from gateway.settings import PricingSettings

MODEL = "gpt-4o-mini"


async def worst_case(client: TestClient, body: dict, max_tokens: int) -> Decimal:
    price = client.app[PRICES].get(MODEL)
    assert price is not None
    tokens_in = (await client.app[TOKENS].count_chat(body, MODEL)).tokens
    return (tokens_in * price.input + max_tokens * price.output) / 10**6


def auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def test_a_budget_too_small_for_the_worst_case_is_402(gateway: TestClient,
                                                            fake_upstream: FakeUpstream) -> None:
    body = chat_body(max_tokens=1000)
    worst = await worst_case(gateway, body, 1000)
    _, key = await create_project(gateway, monthly_budget_usd=str(worst / 2))
    resp = await gateway.post("/v1/chat/completions", json=body, headers=auth(key))
    assert resp.status == 402
    error = (await resp.json())["error"]
    assert error["code"] == "budget_exceeded" and "worst case" in error["message"]
    assert fake_upstream.state.received == 0
    resp = await gateway.post("/api/proxy/chat", headers=auth(key), json={
        "provider": "openai", "model": MODEL, "messages": body["messages"],
        "maxOutputTokens": 1000})
    details = (await resp.json())["details"]
    assert resp.status == 402
    assert Decimal(str(details["request_worst_case"])) == worst
    assert Decimal(str(details["budget_limit"])) == worst / 2
    assert details["current_spend"] == 0


async def test_the_budget_is_spent_to_the_end_and_no_further(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    body = chat_body(max_tokens=8)
    worst = await worst_case(gateway, body, 8)  # the fake answers exactly 8 tokens
    _, key = await create_project(gateway, monthly_budget_usd=str(worst * 10))
    statuses = await asyncio.gather(*(
        gateway.post("/v1/chat/completions", json=body, headers=auth(key)) for _ in range(25)))
    codes = sorted(r.status for r in statuses)
    assert codes.count(200) == 10 and codes.count(402) == 15
    await gateway.app[BUDGETS].flush()
    await wait_for_rows(gateway, 25)
    resp = await gateway.get("/api/budgets/status", headers=auth(key))
    status = await resp.json()
    assert Decimal(str(status["current_spend"])) == worst * 10
    assert status["percentage_used"] == 100.0 and status["budget_limit"] == float(worst * 10)


async def test_clamp_lowers_max_tokens_to_what_fits(make_gateway: GatewayFactory,
                                                    fake_upstream: FakeUpstream) -> None:
    client = await make_gateway(budgets={"policy": "clamp", "clamp_min_output_tokens": 5})
    body = chat_body(max_tokens=1000)
    budget = await worst_case(client, body, 100)  # only 100 output tokens fit
    _, key = await create_project(client, monthly_budget_usd=str(budget))
    fake_upstream.script({"reply_tokens": 2000})
    resp = await client.post("/v1/chat/completions", json=body, headers=auth(key))
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-AI-Cost-Gateway-Max-Tokens-Clamped"] == "100"
    assert fake_upstream.state.log[-1]["body"]["max_tokens"] == 100
    assert (await resp.json())["usage"]["completion_tokens"] == 100
    resp = await client.post("/v1/chat/completions", json=body, headers=auth(key))
    assert resp.status == 402  # nothing left, not even the minimum


async def test_rate_limit_headers_and_429(gateway: TestClient) -> None:
    await away_from_a_minute_edge(5)
    _, key = await create_project(gateway, requests_per_minute=3, requests_per_day=100)
    seen = []
    for _ in range(4):
        resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
        seen.append((resp.status, resp.headers.get("X-RateLimit-Remaining")))
        assert resp.headers["X-RateLimit-Limit"] == "3"
        assert resp.headers["X-AI-Cost-Gateway-RateLimit-Backend"] == "memory"
        assert resp.headers["X-AI-Cost-Gateway-RateLimit-Reset"].endswith("Z")
    assert seen == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_enterprise_is_unlimited_and_overrides_apply(gateway: TestClient) -> None:
    _, key = await create_project(gateway, plan="enterprise")
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
    assert resp.status == 200 and "X-RateLimit-Limit" not in resp.headers
    project, key = await create_project(gateway, plan="free")
    await gateway.patch(f"/api/admin/projects/{project['id']}",
                        json={"requests_per_minute": 1}, headers=admin_headers())
    statuses = [(await gateway.post("/v1/chat/completions", json=chat_body(),
                                    headers=auth(key))).status for _ in range(2)]
    assert statuses == [200, 429]


async def test_tokens_per_minute(gateway: TestClient) -> None:
    body = chat_body(max_tokens=50)
    tokens_in = (await gateway.app[TOKENS].count_chat(body, MODEL)).tokens
    _, key = await create_project(gateway, tokens_per_minute=2 * (tokens_in + 50) + 5)
    statuses = [(await gateway.post("/v1/chat/completions", json=body,
                                    headers=auth(key))).status for _ in range(3)]
    # the fake answers 12 of the 50 reserved tokens, so the settled window has room again
    assert statuses == [200, 200, 200]
    big = chat_body(max_tokens=10_000)
    resp = await gateway.post("/v1/chat/completions", json=big, headers=auth(key))
    assert resp.status == 429 and "tokens_minute" in (await resp.json())["error"]["message"]


async def test_far_from_its_tokens_limit_a_call_reserves_a_ceiling_without_tokenizing(
        gateway: TestClient) -> None:
    limit = 10**6
    project, key = await create_project(gateway, tokens_per_minute=limit)
    counted = gateway.app[TOKENS].usage["cpu"].documents
    resp = await gateway.post("/v1/chat/completions", json=chat_body(max_tokens=50),
                              headers=auth(key))
    assert resp.status == 200
    assert gateway.app[TOKENS].usage["cpu"].documents == counted  # nothing was tokenized
    # settled: the window holds what the call used, not the ceiling it reserved
    usage = (await resp.json())["usage"]
    window = Window(TOKENS_WINDOW, limit, 60, 0)
    used = limit - gateway.app[LIMITER].room(f"project:{project['id']}", window)
    assert used == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_near_its_tokens_limit_a_call_is_counted_exactly(gateway: TestClient) -> None:
    body = chat_body(max_tokens=50)
    tokens = gateway.app[TOKENS]
    exact = (await tokens.count_chat(body, MODEL)).tokens
    assert tokens.chat_upper_bound(body, MODEL) > exact
    _, key = await create_project(gateway, tokens_per_minute=exact + 50)  # no room for more
    counted = tokens.usage["cpu"].documents
    resp = await gateway.post("/v1/chat/completions", json=body, headers=auth(key))
    assert resp.status == 200  # the ceiling would not have fitted: the exact count does
    assert tokens.usage["cpu"].documents > counted


async def test_far_from_its_budget_a_call_reserves_a_ceiling_without_tokenizing(
        gateway: TestClient) -> None:
    _, key = await create_project(gateway, monthly_budget_usd="100")
    body = chat_body(max_tokens=50)
    first = await gateway.post("/v1/chat/completions", json=body, headers=auth(key))
    assert first.status == 200  # the first call leases (counting exactly, as it must wait)
    tokens = gateway.app[TOKENS]
    counted = tokens.usage["cpu"].documents
    for _ in range(3):
        resp = await gateway.post("/v1/chat/completions", json=body, headers=auth(key))
        assert resp.status == 200
    assert tokens.usage["cpu"].documents == counted  # the lease held the ceiling's worst case


async def test_near_its_budget_a_call_is_counted_exactly(gateway: TestClient) -> None:
    body = chat_body(max_tokens=50)
    tokens = gateway.app[TOKENS]
    price = gateway.app[PRICES].get(MODEL)
    assert price is not None
    exact = await worst_case(gateway, body, 50)
    ceiling = (tokens.chat_upper_bound(body, MODEL) * price.input
               + 50 * price.output) / 10**6
    assert ceiling > exact
    _, key = await create_project(gateway, monthly_budget_usd=str((exact + ceiling) / 2))
    counted = tokens.usage["cpu"].documents
    resp = await gateway.post("/v1/chat/completions", json=body, headers=auth(key))
    assert resp.status == 200  # the ceiling's worst case would not have fitted: the exact one does
    assert tokens.usage["cpu"].documents > counted


async def test_one_request_id_is_forwarded_once(gateway: TestClient,
                                                fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    responses = await asyncio.gather(*(
        gateway.post("/v1/chat/completions", json=chat_body(),
                     headers=auth(key, **{"X-Request-Id": "order-42"})) for _ in range(20)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 19
    assert fake_upstream.state.received == 1
    winner = next(r for r in responses if r.status == 200)
    loser = next(r for r in responses if r.status == 409)
    details = (await loser.json())["error"]
    assert details["code"] == "duplicate_request_id"
    resp = await gateway.post("/api/proxy/chat", headers=auth(key, **{"X-Request-Id": "order-42"}),
                              json={"provider": "openai", **chat_body()})
    data = await resp.json()
    assert resp.status == 409
    assert data["details"]["first_request_id"] == winner.headers["X-AI-Cost-Gateway-Request-Id"]
    _, key2 = await create_project(gateway)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(),
                              headers=auth(key2, **{"X-Request-Id": "order-42"}))
    assert resp.status == 200  # another project may use the same id
    resp = await gateway.post("/v1/chat/completions", json=chat_body(),
                              headers=auth(key2, **{"X-Request-Id": "x" * 129}))
    assert resp.status == 400


async def test_budget_status_shapes(gateway: TestClient) -> None:
    project, key = await create_project(gateway, monthly_budget_usd=10)
    resp = await gateway.get("/api/budgets/status", headers=auth(key))
    data = await resp.json()
    assert resp.status == 200
    assert set(data) >= {"current_spend", "budget_limit", "percentage_used",
                         "days_remaining", "projected_spend"}
    assert data["current_spend"] == 0 and data["budget_limit"] == 10
    assert 0 <= data["days_remaining"] <= 31
    resp = await gateway.get("/api/budgets/status", headers=admin_headers())
    assert resp.status == 400
    resp = await gateway.get(f"/api/budgets/status?project_id={project['id']}",
                             headers=admin_headers())
    assert resp.status == 200 and (await resp.json())["project_id"] == project["id"]


async def test_a_stream_cut_by_the_client_is_settled_at_the_tokens_sent(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    body = chat_body(stream=True, max_tokens=500)
    worst = await worst_case(gateway, body, 500)
    _, key = await create_project(gateway, monthly_budget_usd=str(worst * 3))
    fake_upstream.script({"chunk_delay_ms": 150, "reply_tokens": 400})
    resp = await gateway.post("/v1/chat/completions", json=body, headers=auth(key))
    received = b""
    while received.count(b'"content":"w') < 3:
        received += await resp.content.readuntil(b"\n\n")
    resp.close()
    [row] = await wait_for_rows(gateway, 1)
    assert row["status"] == 499 and row["output_source"] == "counted"
    book = gateway.app[BUDGETS]
    await book.flush()
    spent = await gateway.app[POOL].fetchval(
        "SELECT spent_usd FROM budget_periods WHERE scope = 'project'")
    assert spent == row["cost_usd"] and 0 < spent < worst  # the tokens sent, not the worst case
    [account] = [a for a in book.accounts if a.scope == "project"]
    assert account.reserved == 0  # the reservation was released


async def test_a_team_budget_holds_over_its_projects(gateway: TestClient) -> None:
    body = chat_body(max_tokens=8)
    worst = await worst_case(gateway, body, 8)
    first, key_a = await create_project(gateway, team="platform")
    _, key_b = await create_project(gateway, team="platform")
    team_id = (await (await gateway.get(f"/api/admin/projects/{first['id']}",
                                        headers=admin_headers())).json())["team_id"]
    resp = await gateway.put(f"/api/admin/teams/{team_id}/budget", headers=admin_headers(),
                             json={"monthly_budget_usd": str(worst * 3)})
    assert resp.status == 200 and (await resp.json())["monthly_budget_usd"] == float(worst * 3)
    statuses = [(await gateway.post("/v1/chat/completions", json=body,
                                    headers=auth(key))).status
                for key in (key_a, key_b, key_a, key_b)]
    assert statuses == [200, 200, 200, 402]
    assert (await gateway.put("/api/admin/teams/999/budget", headers=admin_headers(),
                              json={"monthly_budget_usd": 1})).status == 404
    assert (await gateway.put(f"/api/admin/teams/{team_id}/budget", headers=admin_headers(),
                              json={"limit": 1})).status == 400


async def test_a_lowered_budget_holds_at_the_next_call(gateway: TestClient) -> None:
    """The lease this process holds under the old, higher limit is handed back first."""
    project, key = await create_project(gateway, monthly_budget_usd=100)
    assert (await gateway.post("/v1/chat/completions", json=chat_body(),
                               headers=auth(key))).status == 200
    resp = await gateway.put(f"/api/admin/projects/{project['id']}/budget",
                             headers=admin_headers(), json={"monthly_budget_usd": 0})
    assert resp.status == 200
    statuses = []
    for _ in range(20):  # the key cache learns the new budget by NOTIFY: a moment at most
        resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
        statuses.append(resp.status)
        if resp.status == 402:
            break
        await asyncio.sleep(0.05)
    assert statuses[-1] == 402 and statuses.count(200) <= 1, statuses


def test_the_worst_case_is_compute_cost_of_uncached_input_and_output() -> None:
    """The guard's shortcut against the one pricing function, for every price in the table."""
    table = PriceTable.load(PricingSettings())
    for price in table.models():
        for tokens_in, tokens_out in ((0, 0), (1, 0), (17, 16), (123_457, 4_096), (0, 10**7)):
            expected = compute_cost(Usage(input_tokens=tokens_in, output_tokens=tokens_out),
                                    price)
            assert BudgetGuard._worst(price, tokens_in, tokens_out) == expected, price.model
