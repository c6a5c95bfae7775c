"""Spend recorded with POST /api/track counts against the same budgets as proxied spend,
on the replica that recorded it at once and on the others as soon as NOTIFY reaches them."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from aiohttp.test_utils import TestClient
from conftest import GatewayFactory, admin_headers, chat_body, create_project

from gateway.keys import BUDGETS, POOL

BUDGET = Decimal("0.05")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _chat(client: TestClient, key: str) -> int:
    resp = await client.post("/v1/chat/completions", json=chat_body(max_tokens=20),
                             headers=auth(key))
    await resp.read()
    return resp.status


async def _track(client: TestClient, key: str, cost: Decimal) -> None:
    resp = await client.post("/api/track", headers=auth(key), json={
        "provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 10,
        "cost": str(cost)})
    assert resp.status == 201, await resp.text()


async def _noticed(client: TestClient, count: int) -> None:
    """Wait (bounded) until this replica has handled `count` spend notices."""
    book = client.app[BUDGETS]
    async with asyncio.timeout(5):
        while book.notices < count:
            book.noticed.clear()
            await book.noticed.wait()


async def test_tracked_spend_that_exhausts_the_budget_makes_the_next_call_402(
        gateway: TestClient) -> None:
    _, key = await create_project(gateway, monthly_budget_usd=str(BUDGET))
    assert await _chat(gateway, key) == 200  # this replica now holds a lease
    await _track(gateway, key, BUDGET * 5)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(max_tokens=20),
                              headers=auth(key))
    assert resp.status == 402, await resp.text()
    assert (await resp.json())["error"]["code"] == "budget_exceeded"
    spent = await gateway.app[POOL].fetchval(
        "SELECT spent_usd FROM budget_periods WHERE scope = 'project'")
    assert spent >= BUDGET * 5


async def test_tracked_spend_counts_on_every_replica(make_gateway: GatewayFactory) -> None:
    one, two = await make_gateway(), await make_gateway()
    _, key = await create_project(one, monthly_budget_usd=str(BUDGET))
    assert await _chat(one, key) == 200
    assert await _chat(two, key) == 200  # both replicas hold leases on the budget
    before = two.app[BUDGETS].notices
    await _track(one, key, BUDGET * 5)  # recorded on replica one
    await _noticed(two, before + 1)
    assert await _chat(two, key) == 402
    assert await _chat(one, key) == 402
    leased = await one.app[POOL].fetchval(
        "SELECT leased_usd FROM budget_periods WHERE scope = 'project'")
    assert leased == 0  # both handed back what they had not reserved


async def test_tracked_spend_counts_against_the_team_budget(gateway: TestClient) -> None:
    resp = await gateway.post("/api/admin/teams", headers=admin_headers(),
                              json={"name": "team-tracked", "monthly_budget_usd": str(BUDGET)})
    assert resp.status == 201, await resp.text()
    team = await resp.json()
    _, spender = await create_project(gateway)
    _, caller = await create_project(gateway)
    for key in (spender, caller):
        project_id = (await (await gateway.get(
            "/api/budgets/status", headers=auth(key))).json())["project_id"]
        resp = await gateway.put(f"/api/admin/teams/{team['id']}/projects/{project_id}",
                                 headers=admin_headers())
        assert resp.status in (200, 201, 204), await resp.text()
    assert await _chat(gateway, caller) == 200
    await _track(gateway, spender, BUDGET * 2)  # another project of the same team
    assert await _chat(gateway, caller) == 402


async def test_a_replayed_tracked_row_counts_once(gateway: TestClient) -> None:
    _, key = await create_project(gateway, monthly_budget_usd="10")
    headers = {**auth(key), "X-Request-Id": "track-once"}
    body = {"provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1,
            "cost": "0.25"}
    assert (await gateway.post("/api/track", headers=headers, json=body)).status == 201
    assert (await gateway.post("/api/track", headers=headers, json=body)).status == 409
    spent = await gateway.app[POOL].fetchval(
        "SELECT spent_usd FROM budget_periods WHERE scope = 'project'")
    assert spent == Decimal("0.25")


async def test_a_spent_budget_stops_free_calls_too(gateway: TestClient) -> None:
    """Moderations and token counts cost nothing and pass while the budget has room; once it
    is spent, a project is stopped everywhere (402), free calls included."""
    _, key = await create_project(gateway, monthly_budget_usd=str(BUDGET))
    calls = [("/v1/moderations", {"model": "omni-moderation-latest", "input": "I like cake"}),
             ("/v1/messages/count_tokens", {"model": "claude-sonnet-4-5", "messages": [
                 {"role": "user", "content": "hello"}]})]
    for path, body in calls:
        resp = await gateway.post(path, json=body, headers=auth(key))
        assert resp.status == 200, await resp.text()
    before = gateway.app[BUDGETS].notices
    await _track(gateway, key, BUDGET)
    await _noticed(gateway, before + 1)
    for path, body in calls:
        resp = await gateway.post(path, json=body, headers=auth(key))
        assert resp.status == 402, await resp.text()
        answer = await resp.json()
        assert "budget is spent" in str(answer), answer
