"""Analytics, costs, burn rate, forecast and team usage on real PostgreSQL, through the app.

Rows go straight into usage_records (the rollup trigger keeps usage_hourly); every money
total the API answers is compared, exactly, with a direct SUM over the raw rows.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import SettingsFactory, admin_headers, create_project

from gateway.analytics import forecast_month
from gateway.app import build_app
from gateway.http import analytics, teams, track

ADMIN = admin_headers()
ROUTES: list[tuple[str, str, Callable[..., Any]]] = [
    ("POST", "/api/track", track.track),
    ("GET", "/api/analytics/usage", analytics.usage),
    ("GET", "/api/analytics/timeseries", analytics.timeseries),
    ("GET", "/api/analytics/burn-rate", analytics.burn_rate),
    ("GET", "/api/costs", analytics.costs),
    ("GET", "/api/costs/forecast", analytics.forecast),
    ("GET", "/api/teams/usage", analytics.teams_usage),
    ("POST", "/api/admin/teams", teams.create_team),
    ("GET", "/api/admin/teams", teams.list_teams),
    ("GET", "/api/admin/teams/{id}", teams.get_team),
    ("PATCH", "/api/admin/teams/{id}", teams.update_team),
    ("DELETE", "/api/admin/teams/{id}", teams.delete_team),
    ("PUT", "/api/admin/teams/{id}/projects/{project_id}", teams.add_project),
    ("DELETE", "/api/admin/teams/{id}/projects/{project_id}", teams.remove_project),
]


def wired_app(settings: Any) -> web.Application:
    """The real app, with these routes added when routes.py does not have them yet."""
    app = build_app(settings)
    served = {(route.method, resource.canonical)
              for resource in app.router.resources() for route in resource}
    for method, path, handler in ROUTES:
        if (method, path) not in served:
            app.router.add_route(method, path, handler)
    return app


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: SettingsFactory,
                 db: asyncpg.Connection) -> TestClient:
    result: TestClient = await aiohttp_client(wired_app(make_settings()))
    return result


async def get_json(client: TestClient, path: str, headers: dict[str, str],
                   status: int = 200, **params: Any) -> Any:
    """GET and parse, with JSON numbers as exact Decimals."""
    resp = await client.get(path, params={k: str(v) for k, v in params.items()},
                            headers=headers)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text, parse_float=Decimal)


def key_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def insert_rows(db: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    """Raw usage rows (one INSERT statement, like a ledger batch)."""
    await db.executemany(
        """INSERT INTO usage_records (request_id, project_id, api_key_id, provider, model,
               endpoint, status, streamed, input_tokens, cached_input_tokens, output_tokens,
               usage_source, cost_usd, priced_by_fallback, overhead_ms, metadata, started_at,
               finished_at)
           VALUES ($1, $2, NULL, $3, $4, '/v1/chat/completions', $5, false, $6, $7, $8,
                   'provider', $9, false, 1.0, $10, $11, $11)""",
        [(uuid.uuid4(), r["project_id"], r.get("provider", "openai"), r.get("model", "gpt-4o"),
          r.get("status", 200), r.get("input_tokens", 100), r.get("cached", 0),
          r.get("output_tokens", 50), r["cost"], r.get("metadata", {}), r["at"])
         for r in rows])


def random_rows(project_ids: list[int], count: int, start: datetime, days: int,
                seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    models = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5"),
              ("gemini", "gemini-1.5-pro")]
    rows = []
    for _ in range(count):
        provider, model = rng.choice(models)
        rows.append({
            "project_id": rng.choice(project_ids), "provider": provider, "model": model,
            "input_tokens": rng.randint(0, 5000), "output_tokens": rng.randint(0, 2000),
            "cost": Decimal(rng.randint(0, 10**12)).scaleb(-13),  # 13 decimal places
            "status": rng.choice([200, 200, 200, 429]),
            "metadata": rng.choice([{}, {"feature": "chat", "user_id": "u1"},
                                    {"feature": "search", "user_id": "u2"}]),
            "at": start + timedelta(seconds=rng.randint(0, days * 86400 - 1))})
    return rows


async def raw_sum(db: asyncpg.Connection, where: str = "true", *args: Any) -> Decimal:
    value: Decimal = await db.fetchval(
        f"SELECT coalesce(sum(cost_usd), 0) FROM usage_records WHERE {where}", *args)
    return value


async def two_projects(client: TestClient) -> tuple[dict[str, Any], str, dict[str, Any], str]:
    a, key_a = await create_project(client, team="alpha")
    b, key_b = await create_project(client, team="beta")
    return a, key_a, b, key_b


# -- usage ------------------------------------------------------------------------------------

async def test_usage_totals_equal_raw_sums_exactly(client: TestClient,
                                                   db: asyncpg.Connection) -> None:
    a, _, b, _ = await two_projects(client)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    await insert_rows(db, random_rows([a["id"], b["id"]], 3000, start, 90))
    body = await get_json(client, "/api/analytics/usage", ADMIN, start_date="2025-03-01",
                          end_date="2025-05-29", group_by="day")
    assert body["start_date"] == "2025-03-01T00:00:00Z"
    assert body["end_date"] == "2025-05-30T00:00:00Z"  # a date-only end includes the day
    total = await raw_sum(db)
    assert body["total_cost"] == total and total != 0
    assert body["total_requests"] == 3000
    tokens = await db.fetchval("SELECT sum(input_tokens + output_tokens) FROM usage_records")
    assert body["total_tokens"] == tokens
    assert body["errors"] == await db.fetchval(
        "SELECT count(*) FROM usage_records WHERE status >= 400")
    for name, column in (("by_provider", "provider"), ("by_model", "model")):
        rows = await db.fetch(f"SELECT {column} AS k, sum(cost_usd) AS c FROM usage_records "
                              f"GROUP BY 1")
        assert body[name] == {r["k"]: r["c"] for r in rows}
    assert len(body["periods"]) == 90  # every day, empty ones too
    daily = {r["d"].isoformat(): r["c"] for r in await db.fetch(
        "SELECT (started_at AT TIME ZONE 'UTC')::date AS d, sum(cost_usd) AS c "
        "FROM usage_records GROUP BY 1")}
    for period in body["periods"]:
        assert period["cost"] == daily.get(period["period"], 0)
        assert sum(period["by_model"].values(), Decimal(0)) == period["cost"]


async def test_partial_days_at_the_edges_are_exact(client: TestClient,
                                                   db: asyncpg.Connection) -> None:
    """Whole days come from usage_daily, the hours around them from usage_hourly."""
    project, _ = await create_project(client, team="edge")
    await insert_rows(db, random_rows([project["id"]], 2000, datetime(2025, 3, 1, tzinfo=UTC),
                                      10, seed=5))
    ranges = [("2025-03-01T05:00:00Z", "2025-03-08T17:00:00Z"),
              ("2025-03-02T23:00:00Z", "2025-03-03T01:00:00Z"),
              ("2025-03-03", "2025-03-03"), ("2025-03-04T00:00:00Z", "2025-03-07T00:00:00Z")]
    for start, end in ranges:
        body = await get_json(client, "/api/analytics/usage", ADMIN, start_date=start,
                              end_date=end, group_by="day")
        lo = datetime.fromisoformat(body["start_date"])
        hi = datetime.fromisoformat(body["end_date"])
        where = "started_at >= $1 AND started_at < $2"
        assert body["total_cost"] == await raw_sum(db, where, lo, hi), (start, end)
        assert body["total_requests"] == await db.fetchval(
            f"SELECT count(*) FROM usage_records WHERE {where}", lo, hi)
        models = {r["model"]: r["c"] for r in await db.fetch(
            f"SELECT model, sum(cost_usd) AS c FROM usage_records WHERE {where} GROUP BY 1",
            lo, hi)}
        assert body["by_model"] == models
        costs = await get_json(client, "/api/costs", ADMIN, start_date=start, end_date=end,
                               group_by="team")
        assert costs["groups"][str(project["team_id"])]["total"] == body["total_cost"]
    daily = await db.fetch("SELECT day, sum(cost_usd) AS c, sum(requests) AS n "
                           "FROM usage_daily GROUP BY 1 ORDER BY 1")
    raw = await db.fetch("SELECT (started_at AT TIME ZONE 'UTC')::date AS day, "
                         "sum(cost_usd) AS c, count(*) AS n FROM usage_records GROUP BY 1 "
                         "ORDER BY 1")
    assert [tuple(r) for r in daily] == [tuple(r) for r in raw]


async def test_project_key_sees_only_its_own_project(client: TestClient,
                                                     db: asyncpg.Connection) -> None:
    a, key_a, b, _ = await two_projects(client)
    now = datetime.now(UTC)
    await insert_rows(db, [
        {"project_id": a["id"], "cost": Decimal("1.25"), "at": now - timedelta(days=1)},
        {"project_id": b["id"], "cost": Decimal("7.5"), "at": now - timedelta(days=1)},
        {"project_id": b["id"], "cost": Decimal("2"), "at": now - timedelta(days=2),
         "metadata": {"feature": "x"}}])
    mine = key_headers(key_a)
    body = await get_json(client, "/api/analytics/usage", mine)
    assert body["project_id"] == a["id"] and body["total_cost"] == Decimal("1.25")
    costs = await get_json(client, "/api/costs", mine, group_by="feature")
    assert costs["total_cost"] == Decimal("1.25") and list(costs["groups"]) == ["(none)"]
    costs = await get_json(client, "/api/costs", mine, group_by="project")
    assert list(costs["groups"]) == [str(a["id"])]
    burn = await get_json(client, "/api/analytics/burn-rate", mine, hours=72)
    assert burn["total_cost"] == Decimal("1.25")
    teams_usage = await get_json(client, "/api/teams/usage", mine)
    assert [(t["name"], t["total_cost"]) for t in teams_usage["teams"]] == [
        ("alpha", Decimal("1.25"))]
    for path in ("/api/analytics/usage", "/api/costs", "/api/analytics/timeseries",
                 "/api/costs/forecast", "/api/teams/usage", "/api/analytics/burn-rate"):
        denied = await get_json(client, path, mine, 403, project_id=b["id"])
        assert denied["details"]["field"] == "project_id"
        denied = await get_json(client, path, mine, 403, team_id=1)
        assert denied["details"]["field"] == "team_id"
        await get_json(client, path, {}, 401)
    # The admin sees both, or one by filter.
    assert (await get_json(client, "/api/analytics/usage", ADMIN))["total_cost"] == Decimal(
        "10.75")
    filtered = await get_json(client, "/api/analytics/usage", ADMIN, project_id=b["id"])
    assert filtered["total_cost"] == Decimal("9.5")


async def test_admin_filters_by_team_provider_and_model(client: TestClient,
                                                        db: asyncpg.Connection) -> None:
    a, _, b, _ = await two_projects(client)
    now = datetime.now(UTC) - timedelta(hours=3)
    await insert_rows(db, [
        {"project_id": a["id"], "provider": "openai", "model": "gpt-4o", "cost": Decimal("1"),
         "at": now, "metadata": {"feature": "chat"}},
        {"project_id": a["id"], "provider": "anthropic", "model": "claude", "cost": Decimal("2"),
         "at": now, "metadata": {"feature": "chat"}},
        {"project_id": b["id"], "provider": "openai", "model": "gpt-4o", "cost": Decimal("4"),
         "at": now, "metadata": {"feature": "chat"}}])
    team_alpha = await db.fetchval("SELECT team_id FROM projects WHERE id = $1", a["id"])
    body = await get_json(client, "/api/analytics/usage", ADMIN, team_id=team_alpha)
    assert body["total_cost"] == 3 and body["by_provider"] == {"anthropic": 2, "openai": 1}
    body = await get_json(client, "/api/analytics/usage", ADMIN, provider="openai")
    assert body["total_cost"] == 5 and list(body["by_model"]) == ["gpt-4o"]
    body = await get_json(client, "/api/analytics/usage", ADMIN, model="claude")
    assert body["total_cost"] == 2
    # Metadata grouping reads raw rows; the team filter still applies there.
    costs = await get_json(client, "/api/costs", ADMIN, group_by="metadata.feature",
                           team_id=team_alpha)
    assert costs["groups"]["chat"]["total"] == 3 and costs["group_by"] == "metadata.feature"


async def test_periods_by_hour_week_and_month(client: TestClient,
                                              db: asyncpg.Connection) -> None:
    project, _ = await create_project(client)
    at = datetime(2025, 6, 4, 10, 30, tzinfo=UTC)  # a Wednesday
    await insert_rows(db, [
        {"project_id": project["id"], "cost": Decimal("0.5"), "at": at},
        {"project_id": project["id"], "cost": Decimal("0.25"), "at": at + timedelta(hours=2)},
        {"project_id": project["id"], "cost": Decimal("1"), "at": at + timedelta(days=30)}])
    hourly = await get_json(client, "/api/analytics/usage", ADMIN, group_by="hour",
                            start_date="2025-06-04T10:45:00Z", end_date="2025-06-04T12:10")
    assert [p["period"] for p in hourly["periods"]] == [
        "2025-06-04T10:00:00Z", "2025-06-04T11:00:00Z", "2025-06-04T12:00:00Z"]
    assert [p["cost"] for p in hourly["periods"]] == [Decimal("0.5"), 0, Decimal("0.25")]
    assert hourly["start_date"] == "2025-06-04T10:00:00Z"  # widened to whole hours
    assert hourly["end_date"] == "2025-06-04T13:00:00Z"
    # An offset's "+" sent unencoded reads as a space; sent encoded it is a "+".
    resp = await client.get("/api/analytics/usage?group_by=hour&start_date=2025-06-04T12:45:00"
                            "+02:00&end_date=2025-06-04T14:10:00%2B02:00", headers=ADMIN)
    shifted = await resp.json()
    assert resp.status == 200, shifted
    assert (shifted["start_date"], shifted["end_date"]) == (hourly["start_date"],
                                                           hourly["end_date"])
    weekly = await get_json(client, "/api/analytics/usage", ADMIN, group_by="week",
                            start_date="2025-06-01", end_date="2025-07-31")
    costs = {p["period"]: p["cost"] for p in weekly["periods"]}
    assert costs["2025-06-02"] == Decimal("0.75") and costs["2025-06-30"] == 1
    monthly = await get_json(client, "/api/analytics/usage", ADMIN, group_by="month",
                             start_date="2025-06-01", end_date="2025-07-31")
    assert [(p["period"], p["cost"]) for p in monthly["periods"]] == [
        ("2025-06-01", Decimal("0.75")), ("2025-07-01", 1)]


@pytest.mark.parametrize(("params", "field"), [
    ({"start_date": "yesterday"}, "start_date"),
    ({"end_date": "2025-13-01"}, "end_date"),
    ({"start_date": "2025-05-02", "end_date": "2025-05-01"}, "end_date"),
    ({"start_date": "2020-01-01", "end_date": "2025-01-01"}, "start_date"),
    ({"group_by": "fortnight"}, "group_by"),
    ({"group_by": "hour", "start_date": "2025-01-01", "end_date": "2025-03-01"}, "group_by"),
    ({"project_id": "abc"}, "project_id"),
])
async def test_usage_rejects_bad_parameters_by_name(client: TestClient, params: dict[str, str],
                                                    field: str) -> None:
    body = await get_json(client, "/api/analytics/usage", ADMIN, 400, **params)
    assert body["details"]["field"] == field and field in body["error"]


# -- timeseries, burn rate ---------------------------------------------------------------------

async def test_timeseries_fills_gaps_and_aggregates(client: TestClient,
                                                    db: asyncpg.Connection) -> None:
    project, key = await create_project(client)
    day = datetime(2025, 2, 10, 12, tzinfo=UTC)
    await insert_rows(db, [
        {"project_id": project["id"], "cost": Decimal("0.1"), "input_tokens": 10,
         "output_tokens": 5, "at": day},
        {"project_id": project["id"], "cost": Decimal("0.3"), "input_tokens": 30,
         "output_tokens": 0, "at": day + timedelta(days=2)}])
    body = await get_json(client, "/api/analytics/timeseries", key_headers(key),
                          metric="tokens", interval="day", start_date="2025-02-10",
                          end_date="2025-02-12")
    assert [(p["date"], p["value"]) for p in body["series"]] == [
        ("2025-02-10", 15), ("2025-02-11", 0), ("2025-02-12", 30)]
    assert body["aggregations"]["total"] == 45 and body["aggregations"]["max"] == 30
    assert body["aggregations"]["peak_date"] == "2025-02-12"
    assert body["aggregations"]["average"] == 15
    cost = await get_json(client, "/api/analytics/timeseries", key_headers(key),
                          start_date="2025-02-10", end_date="2025-02-12")
    assert cost["metric"] == "cost" and cost["aggregations"]["total"] == Decimal("0.4")
    for params, field in (({"metric": "vibes"}, "metric"), ({"interval": "minute"}, "interval")):
        bad = await get_json(client, "/api/analytics/timeseries", key_headers(key), 400,
                             **params)
        assert bad["details"]["field"] == field


async def test_burn_rate_per_hour_and_day(client: TestClient, db: asyncpg.Connection) -> None:
    project, key = await create_project(client)
    now = datetime.now(UTC)
    await insert_rows(db, [
        {"project_id": project["id"], "provider": "openai", "cost": Decimal("1.2"),
         "input_tokens": 100, "output_tokens": 20, "at": now - timedelta(hours=5)},
        {"project_id": project["id"], "provider": "anthropic", "cost": Decimal("0.6"),
         "input_tokens": 50, "output_tokens": 10, "at": now - timedelta(minutes=1)},
        {"project_id": project["id"], "provider": "openai", "cost": Decimal("9"),
         "at": now - timedelta(hours=30)}])  # outside the 24-hour window
    body = await get_json(client, "/api/analytics/burn-rate", key_headers(key))
    assert body["hours"] == 24 and body["total_cost"] == Decimal("1.8")
    assert body["total_tokens"] == 180 and len(body["hourly"]) == 24
    hours = body["window_hours"]
    assert Decimal(23) <= hours <= Decimal(24)
    rate = body["burn_rate"]
    assert abs(rate["cost_per_hour"] - Decimal("1.8") / hours) < Decimal("0.00001")
    assert rate["cost_per_day"] == rate["cost_per_hour"] * 24
    assert set(body["by_provider"]) == {"openai", "anthropic"}
    assert body["current_rate"]["cost_per_hour"] > 0  # the last minute's call
    only = await get_json(client, "/api/analytics/burn-rate", key_headers(key),
                          provider="anthropic", hours=48)
    assert only["total_cost"] == Decimal("0.6")
    for bad in ("0", "x", "100000"):
        err = await get_json(client, "/api/analytics/burn-rate", key_headers(key), 400,
                             hours=bad)
        assert err["details"]["field"] == "hours"


# -- costs -------------------------------------------------------------------------------------

async def test_costs_by_every_group_equal_raw_sums(client: TestClient,
                                                   db: asyncpg.Connection) -> None:
    a, _, b, _ = await two_projects(client)
    start = datetime.now(UTC) - timedelta(days=20)
    await insert_rows(db, random_rows([a["id"], b["id"]], 1500, start, 19, seed=7))
    total = await raw_sum(db)
    raw_group = {
        "provider": "provider", "model": "model", "project": "project_id::text",
        "day": "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "feature": "coalesce(metadata ->> 'feature', '(none)')",
        "metadata.user_id": "coalesce(metadata ->> 'user_id', '(none)')"}
    for group_by, expression in raw_group.items():
        body = await get_json(client, "/api/costs", ADMIN, group_by=group_by)
        assert body["total_cost"] == total, group_by
        expected = {r["k"]: (r["c"], r["n"]) for r in await db.fetch(
            f"SELECT {expression} AS k, sum(cost_usd) AS c, count(*) AS n "
            f"FROM usage_records GROUP BY 1")}
        got = {k: (v["total"], v["requests"]) for k, v in body["groups"].items()
               if v["requests"]}
        assert got == expected, group_by
    teams_body = await get_json(client, "/api/costs", ADMIN, group_by="team")
    names = {v["name"]: v["total"] for v in teams_body["groups"].values()}
    assert names == {
        "alpha": await raw_sum(db, "project_id = $1", a["id"]),
        "beta": await raw_sum(db, "project_id = $1", b["id"])}
    projects_body = await get_json(client, "/api/costs", ADMIN, group_by="project")
    assert projects_body["groups"][str(a["id"])]["name"] == a["name"]
    default = await get_json(client, "/api/costs", ADMIN)
    assert default["group_by"] == "provider"
    bad = await get_json(client, "/api/costs", ADMIN, 400, group_by="a b")
    assert bad["details"]["field"] == "group_by"


async def test_team_attribution_follows_the_rollup(client: TestClient,
                                                   db: asyncpg.Connection) -> None:
    """A project that changes team keeps its earlier usage with the earlier team."""
    project, _ = await create_project(client, team="old")
    at = datetime.now(UTC) - timedelta(days=3)
    await insert_rows(db, [{"project_id": project["id"], "cost": Decimal("3"), "at": at}])
    await db.execute("INSERT INTO teams (name) VALUES ('new')")
    await db.execute("UPDATE projects SET team_id = (SELECT id FROM teams WHERE name = 'new')")
    await insert_rows(db, [{"project_id": project["id"], "cost": Decimal("1"),
                            "at": at + timedelta(days=1)}])
    body = await get_json(client, "/api/teams/usage", ADMIN)
    assert {t["name"]: t["total_cost"] for t in body["teams"]} == {"old": 3, "new": 1}


# -- forecast ----------------------------------------------------------------------------------

def _month(days: dict[int, str]) -> dict[date, Decimal]:
    return {date(2025, 4, day): Decimal(cost) for day, cost in days.items()}


def test_forecast_extends_an_exact_line() -> None:
    # Spend grows by $1 a day from $1 on the 1st; it is noon on the 11th with $5.50 so far.
    daily = _month({d: str(d) for d in range(1, 11)} | {11: "5.5"})
    result = forecast_month(daily, date(2025, 4, 11), Decimal("0.5"), date(2025, 4, 30), None)
    # Rest of today: half of $11; then $12 .. $30.
    assert result.estimated == Decimal(55 + Decimal("5.5") + Decimal("5.5") + sum(range(12, 31)))
    assert result.method == "least_squares_daily" and result.days_observed == 10
    assert result.confidence == 1.0 and result.low == result.high == result.estimated
    assert result.daily_trend == 1


def test_forecast_confidence_reflects_noise_and_budget() -> None:
    rng = random.Random(3)
    daily = {date(2025, 4, d): Decimal(rng.randint(50, 150)) for d in range(1, 21)}
    result = forecast_month(daily, date(2025, 4, 20), Decimal("0.5"), date(2025, 4, 30),
                            Decimal(2000))
    assert 0 < result.confidence < 1
    assert result.low is not None and result.high is not None
    assert result.low < result.estimated < result.high
    assert result.will_exceed is (result.estimated > 2000)
    assert result.probability_of_exceeding is not None
    far = forecast_month(daily, date(2025, 4, 20), Decimal("0.5"), date(2025, 4, 30),
                         Decimal(100_000))
    assert far.will_exceed is False and far.probability_of_exceeding == 0
    spent = sum(daily.values(), Decimal(0))
    over = forecast_month(daily, date(2025, 4, 20), Decimal("0.5"), date(2025, 4, 30),
                          spent / 2)
    assert over.will_exceed and over.probability_of_exceeding == 1
    assert over.exceeds_on is not None and over.exceeds_on <= date(2025, 4, 20)


def test_forecast_with_little_data() -> None:
    first = forecast_month(_month({1: "2"}), date(2025, 4, 1), Decimal("0.25"),
                           date(2025, 4, 30), Decimal(10))
    assert first.method == "extrapolate_today" and first.confidence == 0
    assert first.estimated == 240  # $2 so far, $8 a day: the rest of today and 29 days
    assert first.will_exceed and first.exceeds_on == date(2025, 4, 2)
    mean = forecast_month(_month({1: "1", 2: "3", 3: "2"}), date(2025, 4, 3), Decimal(0),
                          date(2025, 4, 30), None)
    assert mean.method == "mean_daily" and mean.days_observed == 2
    assert mean.estimated == Decimal(6) + 2 * 28  # days 3..30 at the mean of $2
    none = forecast_month({}, date(2025, 4, 9), Decimal("0.5"), date(2025, 4, 30), Decimal(1))
    assert none.estimated == 0 and none.will_exceed is False


async def test_forecast_endpoint(client: TestClient, db: asyncpg.Connection) -> None:
    project, key = await create_project(client, monthly_budget_usd="0.5", team="fc")
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    rows = [{"project_id": project["id"], "cost": Decimal("0.123456789"),
             "at": month_start + (now - month_start) * i / 5} for i in range(5)]
    rows.append({"project_id": project["id"], "cost": Decimal(100),
                 "at": month_start - timedelta(hours=1)})  # last month: not counted
    await insert_rows(db, rows)
    body = await get_json(client, "/api/costs/forecast", key_headers(key))
    assert body["current_spend"] == Decimal("0.123456789") * 5
    assert body["period_start"] == month_start.isoformat().replace("+00:00", "Z")
    eom = body["end_of_month"]
    assert eom["estimated_cost"] >= body["current_spend"]
    assert 0 <= eom["confidence"] <= 1 and eom["method"]
    impact = body["budget_impact"]
    assert impact["budget_limit"] == Decimal("0.5") and impact["will_exceed_budget"] is True
    team_id = await db.fetchval("SELECT team_id FROM projects WHERE id = $1", project["id"])
    await db.execute("UPDATE teams SET monthly_budget_usd = 10000 WHERE id = $1", team_id)
    team = await get_json(client, "/api/costs/forecast", ADMIN, team_id=team_id)
    assert team["budget_impact"]["budget_limit"] == 10000
    assert team["current_spend"] == body["current_spend"]
    everything = await get_json(client, "/api/costs/forecast", ADMIN)
    assert everything["budget_impact"]["budget_limit"] is None
    await get_json(client, "/api/costs/forecast", ADMIN, 404, project_id=999999)


async def test_forecast_months_follow_the_budget_time_zone(
        aiohttp_client: Any, make_settings: SettingsFactory, db: asyncpg.Connection) -> None:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("America/New_York")
    client = await aiohttp_client(wired_app(make_settings(budgets={"timezone": zone.key})))
    project, key = await create_project(client)
    now = datetime.now(zone)
    local_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    await insert_rows(db, [
        {"project_id": project["id"], "cost": Decimal("0.7"), "at": local_start},
        {"project_id": project["id"], "cost": Decimal("0.2"),
         "at": local_start + (now - local_start) / 2},
        {"project_id": project["id"], "cost": Decimal("5"),
         "at": local_start - timedelta(minutes=30)}])  # the previous month, locally
    body = await get_json(client, "/api/costs/forecast", key_headers(key))
    assert body["timezone"] == "America/New_York"
    assert body["current_spend"] == Decimal("0.9")
    assert datetime.fromisoformat(body["period_start"]) == local_start


# -- teams usage -------------------------------------------------------------------------------

async def test_teams_usage(client: TestClient, db: asyncpg.Connection) -> None:
    a, _, b, _ = await two_projects(client)
    c, _ = await create_project(client, team="alpha")
    loner, _ = await create_project(client)
    at = datetime.now(UTC) - timedelta(days=1)
    await insert_rows(db, [
        {"project_id": a["id"], "model": "gpt-4o", "cost": Decimal("1.5"), "at": at},
        {"project_id": c["id"], "model": "claude", "cost": Decimal("2.25"), "at": at},
        {"project_id": b["id"], "model": "gpt-4o", "cost": Decimal("0.5"), "at": at},
        {"project_id": loner["id"], "model": "gpt-4o", "cost": Decimal("0.01"), "at": at}])
    await db.execute("INSERT INTO teams (name) VALUES ('idle')")
    body = await get_json(client, "/api/teams/usage", ADMIN)
    by_name = {t["name"]: t for t in body["teams"]}
    assert [t["name"] for t in body["teams"]] == ["alpha", "beta", None, "idle"]
    assert by_name["alpha"]["total_cost"] == Decimal("3.75")
    assert by_name["alpha"]["top_model"] == "claude" and by_name["alpha"]["projects"] == 2
    assert by_name["idle"]["total_cost"] == 0 and by_name["idle"]["top_model"] is None
    assert by_name[None]["total_cost"] == Decimal("0.01")
    assert sum(t["total_cost"] for t in body["teams"]) == await raw_sum(db)
