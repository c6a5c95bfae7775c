"""meterr's clients work unchanged: every example request of its API overview and reference,
replayed against the running app, answers in the shape the seed documents (the schemas in
`schemas/meterr.json`, written from the seed's examples), with exact money and honoured
filters."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from conftest import (
    GatewayFactory,
    admin_headers,
    away_from_a_minute_edge,
    chat_body,
    create_project,
)
from test_analytics import insert_rows

SCHEMAS = json.loads((Path(__file__).parent / "schemas" / "meterr.json").read_text())
ADMIN = admin_headers()
SECRET = "seed-faces-test-secret-key-0123456789abcdef"
D = Decimal

# The overview's six tracking examples, and what each costs at the providers' list prices.
OVERVIEW_TRACKS = [
    ({"provider": "openai", "model": "gpt-4", "input_tokens": 1500, "output_tokens": 500,
      "endpoint": "/v1/chat/completions",
      "metadata": {"user_id": "user_123", "session": "chat_456"}}, "0.075"),
    ({"provider": "anthropic", "model": "claude-3-opus", "input_tokens": 2000,
      "output_tokens": 800, "endpoint": "/v1/messages",
      "metadata": {"user_id": "user_123", "purpose": "analysis"}}, "0.09"),
    ({"provider": "google", "model": "gemini-pro", "input_tokens": 1200, "output_tokens": 600,
      "endpoint": "/v1beta/models/gemini-pro:generateContent",
      "metadata": {"user_id": "user_123", "project": "research"}}, "0.0015"),
    ({"provider": "azure", "model": "gpt-4-turbo", "input_tokens": 1800, "output_tokens": 700,
      "endpoint": "/openai/deployments/gpt4/chat/completions",
      "metadata": {"deployment": "production", "region": "eastus"}}, "0.039"),
    ({"provider": "mistral", "model": "mistral-large", "input_tokens": 900,
      "output_tokens": 400, "endpoint": "/v1/chat/completions",
      "metadata": {"team": "engineering"}}, "0.0042"),
    ({"provider": "cohere", "model": "command-r-plus", "input_tokens": 1100,
      "output_tokens": 550, "endpoint": "/v1/generate",
      "metadata": {"task": "summarization", "language": "en"}}, "0.00825"),
]


def check(name: str, body: Any) -> None:
    jsonschema.validate(body, {"$ref": f"#/$defs/{name}", "$defs": SCHEMAS["$defs"]})


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


async def call(client: TestClient, method: str, path: str, headers: dict[str, str],
               status: int, **kwargs: Any) -> Any:
    resp = await client.request(method, path, headers=headers, **kwargs)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text, parse_float=Decimal)


@pytest.fixture
async def client(make_gateway: GatewayFactory) -> TestClient:
    return await make_gateway(secrets={"key": SECRET})


async def test_the_overviews_tracking_examples_are_priced_from_the_list(
        client: TestClient, db: asyncpg.Connection) -> None:
    _, key = await create_project(client)
    for body, cost in OVERVIEW_TRACKS:
        answer = await call(client, "POST", "/v1/track", auth(key), 201, json=body)
        check("track", answer)
        assert (answer["total_cost"], answer["priced_by_fallback"]) == (D(cost), False), body
    rows = await db.fetch("SELECT provider, model, cost_usd FROM usage_records ORDER BY model")
    assert {r["provider"] for r in rows} == {"openai", "anthropic", "gemini", "azure",
                                             "mistral", "cohere"}  # google is gemini
    assert sum(r["cost_usd"] for r in rows) == sum(D(c) for _, c in OVERVIEW_TRACKS)


async def test_the_references_examples(client: TestClient, db: asyncpg.Connection) -> None:
    project, key = await create_project(client)
    tracked = await call(client, "POST", "/api/track", auth(key), 201, json={
        "provider": "openai", "model": "gpt-4", "input_tokens": 150, "output_tokens": 500,
        "cost": 0.021, "metadata": {"project": "customer-support", "user_id": "user_123"}})
    check("track", tracked)
    assert tracked["total_cost"] == D("0.021")
    for path in ("/api/analytics/usage", "/v1/usage"):
        usage = await call(client, "GET", path, auth(key), 200, params={
            "start_date": datetime.now(UTC).date().isoformat(), "group_by": "day"})
        check("usage", usage)
        assert (usage["total_tokens"], usage["by_model"]) == (650, {"gpt-4": D("0.021")})
    for path in ("/api/budgets", "/v1/budgets"):
        budget = await call(client, "POST", path, auth(key), 201, json={
            "name": "Monthly AI Budget", "limit": 1000.00, "period": "monthly",
            "alert_at": [50, 80, 100], "notify": ["email", "slack"]})
        check("budget", budget)
        assert budget["limit"] == 1000
    status = await call(client, "GET", "/api/budgets/status", auth(key), 200)
    check("budget_status", status)
    assert (status["current_spend"], status["budget_limit"]) == (D("0.021"), 1000)
    teams = await call(client, "GET", "/api/teams/usage", auth(key), 200)
    check("teams_usage", teams)
    assert all("users" not in team for team in teams["teams"])  # documented as absent
    for sdk in ({"provider": "openai", "model": "gpt-4", "tokens": 650},):  # Node and Python
        answer = await call(client, "POST", "/v1/track", auth(key), 201, json=sdk)
        check("track", answer)
        assert (answer["total_tokens"], answer["token_split"]) == (650, "total_only")
        assert answer["total_cost"] == D("0.039")  # 650 at gpt-4's output price: never under
    assert project["id"] == tracked["project_id"]


async def test_the_core_endpoints(client: TestClient, db: asyncpg.Connection) -> None:
    resp = await client.post("/v1/teams", json={"name": "Engineering"}, headers=ADMIN)
    team = await resp.json()
    assert resp.status == 201
    check("team", team)
    project, key = await create_project(client, team="Engineering")
    _, other = await create_project(client)
    resp = await client.put(f"/api/admin/teams/{team['id']}/projects/{project['id']}",
                            headers=ADMIN)
    assert resp.status == 200, await resp.text()
    await call(client, "POST", "/v1/usage", auth(key), 201, json={
        "provider": "anthropic", "model": "claude-3.5-sonnet", "input_tokens": 1000,
        "output_tokens": 1000})
    check("usage", await call(client, "GET", "/v1/usage", auth(key), 200))
    history = await call(client, "GET", "/v1/usage/history", auth(key), 200)
    check("history", history)
    assert sum(p["cost"] for p in history["series"]) == D("0.018")  # 3.00 + 15.00 per M
    costs = await call(client, "GET", "/v1/costs", auth(key), 200)
    check("costs", costs)
    assert costs["anthropic"]["total"] == D("0.018") and costs["anthropic"]["tokens"] == 2000
    check("forecast", await call(client, "GET", "/v1/costs/forecast", auth(key), 200))
    own = await call(client, "GET", "/v1/teams", auth(key), 200)
    check("teams", own)
    assert [t["name"] for t in own["teams"]] == ["Engineering"]
    assert (await call(client, "GET", "/v1/teams", auth(other), 200))["teams"] == []
    check("teams", await call(client, "GET", "/v1/teams", ADMIN, 200))

    providers = await call(client, "GET", "/v1/providers", auth(key), 200)
    check("providers", providers)
    connected = await call(client, "POST", "/v1/providers/connect", auth(key), 201,
                           json={"provider": "google", "api_key": "AIza-test-key-12345678"})
    check("provider_connected", connected)
    assert connected["provider"] == "gemini" and "AIza" not in json.dumps(connected)
    providers = await call(client, "GET", "/v1/providers", auth(key), 200)
    gemini = next(p for p in providers["providers"] if p["provider"] == "gemini")
    assert [k["name"] for k in gemini["project_keys"]] == ["default"]
    refused = await call(client, "POST", "/v1/providers/connect", auth(key), 403, json={
        "provider": "openai", "api_key": "sk-x-123456789012", "base_url": "http://10.0.0.1"})
    check("error", refused)
    gone = await call(client, "DELETE", "/v1/providers/google", auth(key), 200)
    check("provider_disconnected", gone)
    check("error", await call(client, "DELETE", "/v1/providers/google", auth(key), 404))
    assert await db.fetchval("SELECT count(*) FROM provider_credentials") == 0


async def test_filters_are_honoured(client: TestClient, db: asyncpg.Connection) -> None:
    project, key = await create_project(client)
    week = datetime(2025, 8, 4, 12, tzinfo=UTC)  # a Monday
    rows = [{"project_id": project["id"], "provider": provider, "model": model,
             "cost": D(cost), "at": week + timedelta(days=day)}
            for day, provider, model, cost in (
                (-1, "openai", "gpt-4", "1.5"), (0, "openai", "gpt-4", "2.25"),
                (3, "anthropic", "claude-3-opus", "4.125"), (6, "gemini", "gemini-pro", "0.5"),
                (7, "openai", "gpt-4", "8"), (12, "mistral", "mistral-large", "16"))]
    await insert_rows(db, rows)
    history = await call(client, "GET", "/v1/usage/history", auth(key), 200, params={
        "start_date": "2025-08-04", "end_date": "2025-08-10", "interval": "day"})
    assert [p["date"] for p in history["series"]] == [
        f"2025-08-{d:02d}" for d in range(4, 11)]
    assert sum(p["cost"] for p in history["series"]) == D("6.875")
    usage = await call(client, "GET", "/v1/usage", auth(key), 200, params={
        "start_date": "2025-08-01", "end_date": "2025-08-14", "provider": "openai"})
    assert (usage["by_provider"], usage["total_cost"]) == ({"openai": D("11.75")}, D("11.75"))
    costs = await call(client, "GET", "/v1/costs", auth(key), 200, params={
        "start_date": "2025-08-01", "end_date": "2025-08-14", "group_by": "provider"})
    check("costs", costs)
    assert {name: entry["total"] for name, entry in costs.items()} == {
        "openai": D("11.75"), "anthropic": D("4.125"), "gemini": D("0.5")}
    google = await call(client, "GET", "/v1/costs", auth(key), 200, params={
        "start_date": "2025-08-01", "end_date": "2025-08-14", "provider": "google",
        "group_by": "model"})
    assert list(google) == ["gemini-pro"]


async def test_errors_answer_in_each_paths_shape(client: TestClient) -> None:
    check("error", await call(client, "GET", "/v1/usage", {}, 401))
    bad = await call(client, "POST", "/v1/track", ADMIN, 400, json={"provider": "openai"})
    check("error", bad)
    assert bad["error"]["code"] == "invalid_request"
    # A /v1 path that is neither OpenAI's nor meterr's: still OpenAI's 404.
    for path in ("/v1/nope", "/v1/usage/nope"):
        unknown = await call(client, "GET", path, {}, 404)
        assert set(unknown["error"]) == {"message", "type", "code", "param"}, path
    invite = await call(client, "POST", "/v1/teams/1/invite", ADMIN, 404,
                        json={"email": "a@example.com"})
    check("error", invite)
    assert "not part of this product" in invite["error"]["message"]
    openai = await call(client, "POST", "/v1/chat/completions", {}, 401, json=chat_body())
    assert openai["error"]["type"] == "authentication_error"


async def test_the_plans_daily_request_quota_is_402_and_the_minute_limit_429(
        client: TestClient) -> None:
    body = {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1, "output_tokens": 1}
    _, daily = await create_project(client, requests_per_day=2)
    for _ in range(2):
        await call(client, "POST", "/v1/track", auth(daily), 201, json=body)
    spent = await call(client, "POST", "/v1/track", auth(daily), 402, json=body)
    check("error", spent)
    assert spent["error"]["code"] == "plan_request_limit_exceeded"
    proxied = await call(client, "POST", "/v1/chat/completions", auth(daily), 402,
                         json=chat_body())  # the proxy shares the plan's count
    assert proxied["error"]["code"] == "plan_request_limit_exceeded"
    await away_from_a_minute_edge(5)
    _, minute = await create_project(client, requests_per_minute=2)
    for _ in range(2):
        resp = await client.get("/v1/usage", headers=auth(minute))
        assert resp.status == 200 and "X-RateLimit-Remaining" in resp.headers
    limited = await call(client, "GET", "/v1/usage", auth(minute), 429)
    assert limited["error"]["code"] == "rate_limit_exceeded"


async def test_google_is_gemini_in_routing_and_allow_lists(client: TestClient,
                                                           db: asyncpg.Connection) -> None:
    project, key = await create_project(client, allowed_providers=["google"])
    assert project["allowed_providers"] == ["gemini"]
    answer = await call(client, "POST", "/api/proxy/chat", auth(key), 200, json={
        "provider": "google", "model": "gemini-2.5-flash",
        "messages": [{"role": "user", "content": "Say hello"}]})
    assert answer is not None
    rows = await db.fetch("SELECT provider, model FROM usage_records")
    for _ in range(100):  # the ledger writes proxied rows in batches; bounded wait
        if rows:
            break
        await asyncio.sleep(0.02)
        rows = await db.fetch("SELECT provider, model FROM usage_records")
    assert [(r["provider"], r["model"]) for r in rows] == [("gemini", "gemini-2.5-flash")]
    refused = await call(client, "POST", "/api/proxy/chat", auth(key), 403, json={
        "provider": "openai", "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}]})
    assert "gemini" in json.dumps(refused)
