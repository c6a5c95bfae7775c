"""CodingVibez's clients work unchanged: every example request of its API reference,
replayed against the running app, answers in its envelope and in the shape the seed
documents (the schemas in `schemas/codingvibez.json`), with exact money, honoured filters,
its data freshness and its per-method limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from conftest import GatewayFactory, admin_headers, away_from_a_minute_edge, create_project
from test_analytics import insert_rows

from gateway.http.faces.envelope import freshness

SCHEMAS = json.loads((Path(__file__).parent / "schemas" / "codingvibez.json").read_text())
ADMIN = admin_headers()
D = Decimal
# Paths of its that are out of this product: each answers 404 in its envelope, saying so.
OUT_OF_PRODUCT = [("GET", "/api/organizations"), ("GET", "/api/team/members"),
                  ("POST", "/api/team/invitations"), ("GET", "/api/subscription-status"),
                  ("POST", "/api/checkout"), ("GET", "/api/billing-history"),
                  ("GET", "/api/expenses"), ("POST", "/api/expenses"),
                  ("POST", "/api/receipts/ocr")]


def check(name: str, body: Any) -> None:
    jsonschema.validate(body, {"$ref": f"#/$defs/{name}", "$defs": SCHEMAS["$defs"]})


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


async def call(client: TestClient, method: str, path: str, headers: dict[str, str],
               status: int = 200, schema: str | None = None, **kwargs: Any) -> Any:
    """One request; the body is checked against the envelope and `schema` (for its data)."""
    resp = await client.request(method, path, headers=headers, **kwargs)
    text = await resp.text()
    assert resp.status == status, text
    body = json.loads(text, parse_float=Decimal)
    if status < 400:
        check("success", body)
        assert body["requestId"] == resp.headers["X-AI-Cost-Gateway-Request-Id"]
        if schema is not None:
            check(schema, body["data"])
        return body["data"]
    check("error", body)
    return body


@pytest.fixture
async def client(make_gateway: GatewayFactory) -> TestClient:
    return await make_gateway()


async def seed_usage(db: asyncpg.Connection, project_id: int) -> None:
    """Dec 2025 and Jan 2026 usage (OpenAI, Anthropic, Gemini), and half an hour ago (this
    month's: the tests that count on it are skipped in a month's first half hour)."""
    jan = datetime(2026, 1, 5, 10, tzinfo=UTC)
    rows = [(jan - timedelta(days=10), "openai", "gpt-4-turbo", "10", 1000),
            (jan, "openai", "gpt-4-turbo", "7.5", 2000),
            (jan + timedelta(days=1), "openai", "gpt-4o", "2.5", 500),
            (jan + timedelta(days=2), "anthropic", "claude-3-opus", "20", 3000),
            (jan + timedelta(days=20), "gemini", "gemini-pro", "0.25", 400),
            (jan + timedelta(days=30), "openai", "gpt-4o", "100", 9000)]  # February
    now = datetime.now(UTC)
    recent = now - timedelta(minutes=30)
    if recent.month != now.month:
        pytest.skip("half an hour ago was last month: this month has no usage to show yet")
    rows += [(recent, "openai", "gpt-4o", "0.48", 240), (recent, "anthropic",
                                                         "claude-3-haiku", "0.96", 480)]
    await insert_rows(db, [{"project_id": project_id, "provider": provider, "model": model,
                            "cost": D(cost), "input_tokens": tokens, "output_tokens": 0,
                            "at": at} for at, provider, model, cost, tokens in rows])


async def test_token_tracking_examples(client: TestClient, db: asyncpg.Connection) -> None:
    _, key = await create_project(client)
    tracked = await call(client, "POST", "/api/tokens/track", auth(key), schema="track", json={
        "provider": "openai", "model": "gpt-4-turbo", "inputTokens": 1000, "outputTokens": 500,
        "cachedTokens": 0, "cost": 0.05, "flush": True})
    assert (tracked["cost"], tracked["inputTokens"]) == (D("0.05"), 1000)
    # The Quick Integration class and the Anthropic example: no cost given, so priced.
    for provider, model, cost in (("openai", "gpt-4-turbo", "0.025"),
                                  ("anthropic", "claude-3-opus-20240229", "0.0525"),
                                  ("google", "gemini-pro", "0.00125")):
        answer = await call(client, "POST", "/api/tokens/track", auth(key), schema="track",
                            json={"provider": provider, "model": model, "inputTokens": 1000,
                                  "outputTokens": 500, "flush": True})
        assert (answer["cost"], answer["pricedByFallback"]) == (D(cost), False), model
    assert await db.fetchval("SELECT count(*) FROM usage_records WHERE provider = 'gemini'") == 1
    usage = await call(client, "GET", "/api/tokens", auth(key), schema="tokens")
    assert usage["dataFreshness"] == "fresh"
    assert sum(entry["cost"] for entry in usage["tokens"]) == D("0.12875")


async def test_usage_and_cost_examples(client: TestClient, db: asyncpg.Connection) -> None:
    project, key = await create_project(client, monthly_budget_usd=10)
    await seed_usage(db, project["id"])
    january = await call(client, "GET", "/api/tokens", auth(key), schema="tokens", params={
        "billingStartDate": "2026-01-01", "billingEndDate": "2026-01-31"})
    assert {(t["provider"], t["model"]): t["cost"] for t in january["tokens"]} == {
        ("openai", "gpt-4-turbo"): D("7.5"), ("openai", "gpt-4o"): D("2.5"),
        ("anthropic", "claude-3-opus"): D("20"), ("gemini", "gemini-pro"): D("0.25")}
    assert january["dataFreshness"] == "stale"  # the newest row is 30 minutes old
    stats = await call(client, "GET", "/api/tokens/stats", auth(key), schema="stats",
                       params={"provider": "openai"})
    assert stats["budget"] == {"limit": 10, "used": D("1.44"), "remaining": D("8.56")}
    assert stats["usage"] == {"totalTokens": 240, "totalCost": D("0.48"), "requests": 1}
    series = await call(client, "GET", "/api/tokens/timeseries", auth(key),
                        schema="timeseries",
                        params={"startDate": "2026-01-01", "endDate": "2026-01-29"})
    assert [p["date"] for p in series["series"]] == [f"2026-01-{d:02d}" for d in range(1, 30)]
    assert sum(p["cost"] for p in series["series"]) == D("30.25")
    assert series["aggregations"]["total"] == 5900  # tokens, the default metric
    burn = await call(client, "GET", "/api/tokens/burn-rate", auth(key), schema="burn_rate",
                      params={"hours": "24", "service": "openai"})
    assert list(burn["byService"]) == ["openai"] and burn["totalCost"] == D("0.48")
    costs = await call(client, "GET", "/api/costs/openai", auth(key), schema="provider_costs",
                       params={"month": "1", "year": "2026"})
    assert (costs["currentMonth"], costs["previousMonth"]) == (D("10"), D("10"))
    assert costs["breakdown"] == {"gpt-4-turbo": D("7.5"), "gpt-4o": D("2.5")}
    assert costs["tokenUsage"]["totalTokens"] == 2500
    google = await call(client, "GET", "/api/costs/google", auth(key),
                        schema="provider_costs", params={"month": "1", "year": "2026"})
    assert (google["service"], google["currentMonth"]) == ("gemini", D("0.25"))
    everything = await call(client, "GET", "/api/costs/all", auth(key), schema="all_costs",
                            params={"month": "1", "year": "2026"})
    assert everything["total"] == D("30.25")
    assert everything["byProvider"] == {"anthropic": D("20"), "openai": D("10"),
                                        "gemini": D("0.25")}
    assert everything["comparison"] == {"previousMonth": D("10"), "changePercent": D("202.50")}


async def test_manual_costs_stand_beside_metered_spend(client: TestClient,
                                                       db: asyncpg.Connection) -> None:
    project, key = await create_project(client)
    await seed_usage(db, project["id"])
    manual = await call(client, "POST", "/api/costs/manual", auth(key), 201,
                        schema="manual_cost", json={
                            "service": "OpenAI", "amount": 50.00, "month": 1, "year": 2026,
                            "category": "API Calls", "description": "Monthly subscription"})
    assert (manual["amount"], manual["month"], manual["year"]) == (50, 1, 2026)
    everything = await call(client, "GET", "/api/costs/all", auth(key), schema="all_costs",
                            params={"month": "1", "year": "2026"})
    assert everything["total"] == D("30.25")  # never mixed into metered spend
    assert everything["manualCosts"]["byService"] == {"OpenAI": 50}
    openai = await call(client, "GET", "/api/costs/openai", auth(key), params={
        "month": "1", "year": "2026"})
    assert (openai["currentMonth"], openai["manualCosts"]["total"]) == (D("10"), 50)
    bad = await call(client, "POST", "/api/costs/manual", auth(key), 400,
                     json={"service": "", "amount": -1, "month": 13})
    assert bad["code"] == "VALIDATION_ERROR"
    assert await db.fetchval("SELECT count(*) FROM manual_costs") == 1


async def test_dashboard_analytics_and_projections(client: TestClient,
                                                   db: asyncpg.Connection) -> None:
    project, key = await create_project(client, monthly_budget_usd=1)
    await seed_usage(db, project["id"])
    board = await call(client, "GET", "/api/dashboard", auth(key), schema="dashboard")
    assert board["totalCosts"]["currentMonth"] == D("1.44")
    assert [m["model"] for m in board["topModels"]] == ["claude-3-haiku", "gpt-4o"]
    series = await call(client, "GET", "/api/analytics", auth(key), schema="analytics",
                        params={"startDate": "2026-01-01", "endDate": "2026-01-29",
                                "groupBy": "day"})
    assert len(series["series"]) == 29 and series["totals"]["cost"] == D("30.25")
    assert series["averages"]["cost"] == (D("30.25") / 29).quantize(D("0.000000001"))
    week = await call(client, "GET", "/api/analytics", auth(key), params={
        "startDate": "2026-01-05", "endDate": "2026-01-11", "groupBy": "week"})
    assert [(p["date"], p["cost"]) for p in week["series"]] == [("2026-01-05", D("30"))]
    projection = await call(client, "GET", "/api/projections", auth(key), schema="projections")
    assert projection["budgetImpact"]["willExceedBudget"] is True  # 1.44 spent of 1


async def test_health_tracking_health_and_status(client: TestClient,
                                                 db: asyncpg.Connection) -> None:
    project, key = await create_project(client)
    health = await call(client, "GET", "/api/health", {}, schema="health")
    assert health["database"]["healthy"] is True
    tracking = await call(client, "GET", "/api/tracking-health", auth(key),
                          schema="tracking_health")
    assert tracking["dataFreshness"] == "no_data"
    await seed_usage(db, project["id"])
    tracking = await call(client, "GET", "/api/tracking-health", auth(key),
                          schema="tracking_health")
    assert tracking["dataFreshness"] == "stale"
    status = await call(client, "GET", "/api/status", auth(key), schema="status")
    assert status["integrations"]["anthropic"]["connected"] is True  # the gateway's key
    assert status["integrations"]["openai"]["connected"] is False  # no key configured
    assert await call(client, "GET", "/api/status", {}, 401) is not None


@pytest.mark.parametrize(("method", "path"), OUT_OF_PRODUCT)
async def test_paths_out_of_this_product_answer_404_saying_so(client: TestClient, method: str,
                                                              path: str) -> None:
    answer = await call(client, method, path, ADMIN, 404)
    assert answer["code"] == "NOT_FOUND" and "not part of this product" in answer["error"]


async def test_errors_are_in_its_envelope(client: TestClient) -> None:
    assert (await call(client, "GET", "/api/dashboard", {}, 401))["code"] == \
        "AUTHENTICATION_ERROR"
    _, key = await create_project(client)
    _, other = await create_project(client)
    denied = await call(client, "GET", "/api/tokens", auth(other), 403,
                        params={"project_id": "1"})
    assert denied["code"] == "AUTHORIZATION_ERROR"
    bad = await call(client, "GET", "/api/tokens/burn-rate", auth(key), 400,
                     params={"hours": "0"})
    assert bad["code"] == "VALIDATION_ERROR"
    wrong = await call(client, "GET", "/api/costs/manual", ADMIN, 405)  # not a service
    assert wrong["code"] == "METHOD_NOT_ALLOWED"
    # The gateway's own /api routes keep the gateway's shape.
    resp = await client.get("/api/costs/forecast")
    assert set(await resp.json()) == {"error", "code", "requestId", "details"}


async def test_its_per_method_limits_and_the_plans_limits(client: TestClient) -> None:
    await away_from_a_minute_edge(15)
    _, key = await create_project(client, plan="enterprise")  # no plan limits
    resp = await client.get("/api/projections", headers=auth(key))
    assert (resp.status, resp.headers["X-RateLimit-Limit"]) == (200, "100")
    for n in range(30):
        resp = await client.post("/api/costs/manual", headers=auth(key),
                                 json={"service": "Cursor", "amount": 20})
        assert resp.status == 201 and resp.headers["X-RateLimit-Remaining"] == str(29 - n)
    limited = await call(client, "POST", "/api/costs/manual", auth(key), 429,
                         json={"service": "Cursor", "amount": 20})
    assert limited["code"] == "RATE_LIMIT_EXCEEDED"
    assert (await client.get("/api/projections", headers=auth(key))).status == 200  # GET's own
    _, small = await create_project(client, requests_per_minute=2)
    for _ in range(2):
        await call(client, "GET", "/api/analytics", auth(small))
    assert (await call(client, "GET", "/api/analytics", auth(small), 429))["code"] == \
        "RATE_LIMIT_EXCEEDED"


@pytest.mark.parametrize(("age", "expected"), [
    (None, "no_data"), (timedelta(0), "fresh"), (timedelta(minutes=14, seconds=59), "fresh"),
    (timedelta(minutes=15), "stale"), (timedelta(minutes=60), "stale"),
    (timedelta(minutes=60, seconds=1), "very_stale"), (timedelta(days=3), "very_stale")])
def test_data_freshness_as_it_defines_it(age: timedelta | None, expected: str) -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert freshness(None if age is None else now - age, now) == expected


async def test_with_the_database_gone_its_answers_are_database_errors(
        make_gateway: GatewayFactory, pg_proxy: Any) -> None:
    proxy, dsn = pg_proxy
    client = await make_gateway(database={"url": dsn, "connect_timeout_s": 0.5,
                                          "query_timeout_s": 1.0})
    await call(client, "GET", "/api/health", {}, schema="health")
    await proxy.cut()
    for path in ("/api/health", "/api/costs/all", "/api/dashboard"):
        answer = await call(client, "GET", path, ADMIN, 503)
        assert answer["code"] == "DATABASE_ERROR", path
