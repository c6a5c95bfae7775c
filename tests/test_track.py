"""`POST /api/track` on real PostgreSQL: validated, priced, idempotent, durable, scoped."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from conftest import SettingsFactory, admin_headers, create_project
from test_analytics import get_json, key_headers, wired_app

from gateway.domain import Usage
from gateway.keys import PRICES
from gateway.pricing import compute_cost

ADMIN = admin_headers()


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: SettingsFactory,
                 db: asyncpg.Connection) -> TestClient:
    result: TestClient = await aiohttp_client(wired_app(make_settings()))
    return result


async def post(client: TestClient, body: Any, headers: dict[str, str],
               status: int = 201) -> Any:
    resp = await client.post("/api/track", json=body, headers=headers)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text, parse_float=Decimal)


SEED_BODY = {"provider": "openai", "model": "gpt-4", "input_tokens": 150, "output_tokens": 500,
             "cost": 0.021, "metadata": {"project": "customer-support", "user_id": "user_123"}}


async def test_tracks_the_seed_body_durably(client: TestClient, db: asyncpg.Connection) -> None:
    project, key = await create_project(client)
    body = await post(client, SEED_BODY, key_headers(key))
    assert body["status"] == "tracked" and body["id"].startswith("track_")
    assert body["total_cost"] == Decimal("0.021") and body["timestamp"].endswith("Z")
    assert body["cost_source"] == "client" and body["priced_by_fallback"] is False
    # Committed before the answer: no wait needed.
    row = await db.fetchrow("SELECT * FROM usage_records")
    assert row["request_id"] == uuid.UUID(body["request_id"])
    assert body["id"] == f"track_{row['request_id'].hex}"
    assert (row["project_id"], row["provider"], row["model"]) == (project["id"], "openai",
                                                                  "gpt-4")
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (150, 500,
                                                                          Decimal("0.021"))
    assert row["endpoint"] == "/api/track" and row["usage_source"] == "provider"
    assert row["status"] == 200 and row["api_key_id"] is not None
    assert row["metadata"] == SEED_BODY["metadata"]
    hourly = await db.fetchrow("SELECT requests, cost_usd FROM usage_hourly")
    assert (hourly["requests"], hourly["cost_usd"]) == (1, Decimal("0.021"))


async def test_prices_calls_without_a_cost(client: TestClient, db: asyncpg.Connection) -> None:
    _, key = await create_project(client)
    prices = client.app[PRICES]
    body = await post(client, {"provider": "openai", "model": "gpt-4o-mini",
                               "input_tokens": 1000, "output_tokens": 200, "cached_tokens": 400,
                               "endpoint": "/v1/chat/completions"}, key_headers(key))
    price = prices.get("gpt-4o-mini")
    assert price is not None
    expected = compute_cost(Usage(1000, 400, 200), price)
    assert body["total_cost"] == expected and body["cost_source"] == "price_table"
    assert body["price_model"] == "gpt-4o-mini" and body["priced_by_fallback"] is False
    unknown = await post(client, {"provider": "openai", "model": "gpt-imaginary",
                                  "input_tokens": 10, "output_tokens": 10}, key_headers(key))
    quote = prices.quote("openai", "gpt-imaginary", Usage(10, 0, 10))
    assert quote.fallback and unknown["total_cost"] == quote.cost > 0
    assert unknown["priced_by_fallback"] is True and unknown["cost_source"] == "fallback"
    rows = {r["model"]: r for r in await db.fetch("SELECT * FROM usage_records")}
    assert rows["gpt-4o-mini"]["endpoint"] == "/v1/chat/completions"
    assert rows["gpt-4o-mini"]["cost_usd"] == expected
    assert rows["gpt-4o-mini"]["cached_input_tokens"] == 400
    assert rows["gpt-imaginary"]["priced_by_fallback"] is True
    assert rows["gpt-imaginary"]["price_model"] == quote.price.model


async def test_same_request_id_counts_once(client: TestClient, db: asyncpg.Connection) -> None:
    a, key_a = await create_project(client)
    _, key_b = await create_project(client)
    headers = {**key_headers(key_a), "X-Request-Id": "call-42"}
    first = await post(client, SEED_BODY, headers)
    again = await post(client, {**SEED_BODY, "cost": 5}, headers, status=409)
    assert again["code"] == "duplicate_request_id"
    assert again["details"]["first_tracking_id"] == first["id"]
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 1
    assert await db.fetchval("SELECT sum(cost_usd) FROM usage_hourly") == Decimal("0.021")
    # Another project may use the same id; the admin tracking for project a may not.
    await post(client, SEED_BODY, {**key_headers(key_b), "X-Request-Id": "call-42"})
    await post(client, {**SEED_BODY, "project_id": a["id"]},
               {**ADMIN, "X-Request-Id": "call-42"}, status=409)
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 2
    too_long = await post(client, SEED_BODY, {**headers, "X-Request-Id": "x" * 500}, 400)
    assert too_long["details"]["field"] == "X-Request-Id"


async def test_concurrent_retries_count_once(client: TestClient, db: asyncpg.Connection) -> None:
    _, key = await create_project(client)
    headers = {**key_headers(key), "X-Request-Id": "burst"}
    responses = await asyncio.gather(*(client.post("/api/track", json=SEED_BODY,
                                                   headers=headers) for _ in range(10)))
    assert sorted(r.status for r in responses) == [201] + [409] * 9
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 1


@pytest.mark.parametrize(("body", "fields"), [
    ({}, {"provider", "model", "input_tokens", "output_tokens"}),
    ({**SEED_BODY, "input_tokens": -1, "output_tokens": "5"}, {"input_tokens", "output_tokens"}),
    ({**SEED_BODY, "cost": "cheap"}, {"cost"}),
    ({**SEED_BODY, "cost": -0.5}, {"cost"}),
    ({**SEED_BODY, "cached_tokens": 151}, {"cached_tokens"}),
    ({**SEED_BODY, "metadata": ["a"]}, {"metadata"}),
    ({**SEED_BODY, "tokens": 651}, {"tokens"}),  # not input + output
    ({**SEED_BODY, "inputTokens": 3}, {"inputTokens"}),
    ({**SEED_BODY, "model": "", "endpoint": 7}, {"model", "endpoint"}),
    ({**SEED_BODY, "input_tokens": True}, {"input_tokens"}),
])
async def test_rejects_bad_bodies_naming_each_problem(client: TestClient, db: asyncpg.Connection,
                                                      body: dict[str, Any],
                                                      fields: set[str]) -> None:
    _, key = await create_project(client)
    answer = await post(client, body, key_headers(key), status=400)
    assert {p["field"] for p in answer["details"]["errors"]} == fields
    for field in fields:
        assert field in answer["error"]
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 0


async def test_accepts_the_camel_case_seed_names(client: TestClient,
                                                 db: asyncpg.Connection) -> None:
    _, key = await create_project(client)
    await post(client, {"provider": "anthropic", "model": "claude-3-opus-20240229",
                        "inputTokens": 1000, "outputTokens": 500, "cachedTokens": 100,
                        "cost": 0.05, "flush": True}, key_headers(key))
    row = await db.fetchrow("SELECT * FROM usage_records")
    assert (row["input_tokens"], row["output_tokens"], row["cached_input_tokens"]) == (
        1000, 500, 100)


async def test_scopes(client: TestClient, db: asyncpg.Connection) -> None:
    a, key_a = await create_project(client)
    b, _ = await create_project(client)
    answer = await post(client, {**SEED_BODY, "project_id": b["id"]}, ADMIN)
    assert answer["project_id"] == b["id"]
    assert await db.fetchval("SELECT api_key_id FROM usage_records") is None
    missing = await post(client, SEED_BODY, ADMIN, status=400)
    assert missing["details"]["field"] == "project_id"
    await post(client, {**SEED_BODY, "project_id": 999_999}, ADMIN, status=404)
    await post(client, {**SEED_BODY, "project_id": b["id"]}, key_headers(key_a), status=403)
    await post(client, {**SEED_BODY, "project_id": a["id"]}, key_headers(key_a))
    await post(client, SEED_BODY, {}, status=401)
    await post(client, SEED_BODY, {"Authorization": "Bearer gw_nope"}, status=401)
    await client.patch(f"/api/admin/projects/{a['id']}", json={"enabled": False},
                       headers=ADMIN)
    for _ in range(100):  # the key cache drops the project on NOTIFY; bounded wait
        resp = await client.post("/api/track", json=SEED_BODY, headers=key_headers(key_a))
        if resp.status == 403:
            break
        await asyncio.sleep(0.02)
    assert resp.status == 403 and (await resp.json())["code"] == "project_disabled"


async def test_tracked_usage_shows_in_analytics(client: TestClient,
                                                db: asyncpg.Connection) -> None:
    _, key = await create_project(client)
    for cost in ("0.1", "0.2", "0.000000001"):
        await post(client, {**SEED_BODY, "cost": cost}, key_headers(key))
    usage = await get_json(client, "/api/analytics/usage", key_headers(key))
    assert usage["total_cost"] == Decimal("0.300000001") and usage["total_requests"] == 3
    assert usage["by_model"] == {"gpt-4": Decimal("0.300000001")}
    costs = await get_json(client, "/api/costs", key_headers(key), group_by="user_id")
    assert costs["groups"]["user_123"]["total"] == Decimal("0.300000001")
