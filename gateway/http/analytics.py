"""Usage analytics, costs, the end-of-month forecast and team usage (`/api/analytics/*`,
`/api/costs*`, `/api/teams/usage`).

A project key sees its own project; the admin token sees everything and may filter by
`project_id` and `team_id`. Either may filter by `provider` and `model`. Dates are ISO 8601
dates or date-times (naive means UTC; a date-only `end_date` includes that day); ranges are
widened to whole UTC hours, the rollups' grain, and every answer gives the bounds it covers.
Money is rendered as exact JSON numbers (the NUMERIC value's own digits, never a float).
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from aiohttp import web

from gateway import analytics, checks
from gateway.analytics import UNITS, ZERO, Scope, Totals, buckets, label, truncate
from gateway.checks import Query, invalid
from gateway.domain import canonical_provider
from gateway.errors import Forbidden, NotFound
from gateway.http.access import Access, Caller, caller
from gateway.http.database import connection
from gateway.http.json import json_default
from gateway.keys import SETTINGS

DEFAULT_RANGE = timedelta(days=30)
MAX_RANGE = timedelta(days=731)
MAX_HOURLY_RANGE = timedelta(days=31)
MAX_BURN_HOURS = 24 * 366
METRICS = ("cost", "tokens", "input_tokens", "output_tokens", "cached_input_tokens",
           "requests", "errors")
COST_KEYS = {"provider": "provider", "model": "model", "project": "project_id",
             "team": "team_id"}
NO_VALUE = "(none)"  # the group of rows whose metadata lacks the key
_METADATA_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")
_RATE = Decimal("0.000000001")


def exact_json(data: Any, status: int = 200) -> web.Response:
    """JSON with money as exact decimal numbers and date-times in UTC with a `Z`."""
    return web.Response(body=orjson.dumps(data, default=json_default,
                                          option=orjson.OPT_UTC_Z),
                        status=status, content_type="application/json")


# -- parameters ------------------------------------------------------------------------------

# The seeds' other names for the same parameters (CodingVibez: camelCase dates, `service`).
ALIASES = {"startDate": "start_date", "endDate": "end_date", "groupBy": "group_by",
           "service": "provider", "projectId": "project_id", "teamId": "team_id"}
SCOPE_PARAMS = ("project_id", "team_id", "provider", "model")
RANGE_PARAMS = ("start_date", "end_date")
USAGE_PARAMS = (*RANGE_PARAMS, "group_by", *SCOPE_PARAMS)
TIMESERIES_PARAMS = (*RANGE_PARAMS, "metric", "interval", *SCOPE_PARAMS)
BURN_RATE_PARAMS = ("hours", *SCOPE_PARAMS)
COSTS_PARAMS = (*RANGE_PARAMS, "group_by", *SCOPE_PARAMS)
FORECAST_PARAMS = SCOPE_PARAMS
TEAMS_USAGE_PARAMS = (*RANGE_PARAMS, *SCOPE_PARAMS)


def read_query(request: web.Request, accepted: tuple[str, ...],
               aliases: dict[str, str] = ALIASES) -> dict[str, str]:
    """The route's query under canonical names; 400 naming an unknown or repeated one."""
    return checks.read_query(request.query, accepted, aliases)


async def read_scope(request: web.Request, accepted: tuple[str, ...],
                     aliases: dict[str, str] = ALIASES) -> tuple[Scope, dict[str, str]]:
    """Authenticate, then the query and the scope: the key's own project, or the admin's
    filters."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    query = read_query(request, accepted, aliases)
    return scope_of(who, query), query


def scope_of(who: Caller, query: Query) -> Scope:
    if not who.admin and "team_id" in query:
        raise Forbidden("team_id needs the admin token; a project key sees its own project",
                        details={"field": "team_id"})
    provider = checks.text_param(query, "provider")
    return Scope(who.project_filter(checks.id_param(query, "project_id")),
                 checks.id_param(query, "team_id"),
                 None if provider is None else canonical_provider(provider),
                 checks.text_param(query, "model"))


def read_range(query: Query, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) from `start_date`/`end_date` (default: the last 30 days), whole hours."""
    end = checks.date_param(query, "end_date", end=True) or now
    start = checks.date_param(query, "start_date") or end - DEFAULT_RANGE
    if end <= start:
        raise invalid("end_date", "must be after start_date")
    start = truncate(start, "hour")
    end = truncate(end - timedelta(microseconds=1), "hour") + timedelta(hours=1)
    if end - start > MAX_RANGE:
        raise invalid("start_date", f"the range may span at most {MAX_RANGE.days} days")
    return start, end


def _check_hourly(unit: str, name: str, start: datetime, end: datetime) -> None:
    if unit == "hour" and end - start > MAX_HOURLY_RANGE:
        raise invalid(name, f"hourly grouping covers at most {MAX_HOURLY_RANGE.days} days; "
                      "narrow start_date/end_date or group by day")


def _header(scope: Scope, start: datetime, end: datetime) -> dict[str, Any]:
    return {"start_date": start, "end_date": end, "project_id": scope.project_id,
            "team_id": scope.team_id, "provider": scope.provider, "model": scope.model}


def _costs(groups: dict[Any, Totals]) -> dict[str, Decimal]:
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1].cost, str(kv[0])))
    return {str(key): totals.cost for key, totals in ranked}


# -- handlers --------------------------------------------------------------------------------

async def usage(request: web.Request) -> web.Response:
    scope, query = await read_scope(request, USAGE_PARAMS)
    return exact_json(await usage_answer(request, scope, query))


async def usage_answer(request: web.Request, scope: Scope,
                       query: Query) -> dict[str, Any]:
    """Requests, tokens and cost per period, with totals by provider and by model."""
    start, end = read_range(query, datetime.now(UTC))
    unit = checks.choice(query, "group_by", UNITS, "day")
    _check_hourly(unit, "group_by", start, end)
    async with connection(request) as conn:
        return await usage_report(conn, scope, start, end, unit)


async def usage_report(conn: asyncpg.Connection, scope: Scope, start: datetime, end: datetime,
                       unit: str) -> dict[str, Any]:
    """`GET /api/analytics/usage`'s answer (the dashboard renders the same one)."""
    rows = await analytics.rollup(conn, scope, start, end, unit=unit, keys=("provider", "model"))
    total = Totals()
    providers: dict[str, Totals] = defaultdict(Totals)
    models: dict[str, Totals] = defaultdict(Totals)
    periods = {bucket: Totals() for bucket in buckets(start, end, unit)}
    period_models: dict[datetime, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    for row in rows:
        for totals in (total, providers[row["provider"]], models[row["model"]],
                       periods.setdefault(row["bucket"], Totals()),
                       period_models[row["bucket"]][row["model"]]):
            totals.add(row)
    return {
        **_header(scope, start, end), "group_by": unit,
        "total_requests": total.requests, "total_tokens": total.tokens,
        "input_tokens": total.input_tokens, "cached_input_tokens": total.cached_input_tokens,
        "cache_write_tokens": total.cache_write_tokens, "output_tokens": total.output_tokens,
        "errors": total.errors, "total_cost": total.cost,
        "by_provider": _costs(providers), "by_model": _costs(models),
        "periods": [{"period": label(bucket, unit), **totals.render(),
                     "by_model": _costs(period_models.get(bucket, {}))}
                    for bucket, totals in sorted(periods.items())],
    }


def _metric(totals: Totals, metric: str) -> int | Decimal:
    if metric == "cost":
        return totals.cost
    return totals.tokens if metric == "tokens" else int(getattr(totals, metric))


async def timeseries(request: web.Request) -> web.Response:
    scope, query = await read_scope(request, TIMESERIES_PARAMS)
    return exact_json(await timeseries_answer(request, scope, query))


async def timeseries_answer(request: web.Request, scope: Scope,
                            query: Query) -> dict[str, Any]:
    """One metric per interval, gaps filled with zeros, and its aggregations."""
    start, end = read_range(query, datetime.now(UTC))
    metric = checks.choice(query, "metric", METRICS, "cost")
    unit = checks.choice(query, "interval", UNITS, "day")
    _check_hourly(unit, "interval", start, end)
    async with connection(request) as conn:
        return await timeseries_report(conn, scope, start, end, metric, unit)


async def timeseries_report(conn: asyncpg.Connection, scope: Scope, start: datetime,
                            end: datetime, metric: str, unit: str) -> dict[str, Any]:
    """`GET /api/analytics/timeseries`'s answer."""
    rows = await analytics.rollup(conn, scope, start, end, unit=unit)
    points = {bucket: Totals() for bucket in buckets(start, end, unit)}
    for row in rows:
        points.setdefault(row["bucket"], Totals()).add(row)
    series = [(bucket, _metric(totals, metric), totals)
              for bucket, totals in sorted(points.items())]
    values = [value for _, value, _ in series]
    total = analytics.exact_sum(Decimal(v) for v in values)
    peak = max(series, key=lambda point: point[1])
    return {
        **_header(scope, start, end), "metric": metric, "interval": unit,
        "series": [{"date": label(bucket, unit), "value": value, "cost": totals.cost,
                    "total_tokens": totals.tokens, "requests": totals.requests}
                   for bucket, value, totals in series],
        "aggregations": {"total": total, "points": len(values),
                         "average": (total / len(values)).quantize(_RATE),
                         "min": min(values), "max": max(values),
                         "peak_date": label(peak[0], unit)},
    }


def _rates(totals: Totals, hours: Decimal) -> dict[str, Any]:
    per_hour_cost = (totals.cost / hours).quantize(_RATE)
    per_hour_tokens = (Decimal(totals.tokens) / hours).quantize(Decimal("0.001"))
    return {"tokens_per_hour": per_hour_tokens, "cost_per_hour": per_hour_cost,
            "tokens_per_day": per_hour_tokens * 24, "cost_per_day": per_hour_cost * 24}


async def burn_rate(request: web.Request) -> web.Response:
    scope, query = await read_scope(request, BURN_RATE_PARAMS)
    return exact_json(await burn_rate_answer(request, scope, query))


async def burn_rate_answer(request: web.Request, scope: Scope,
                           query: Query) -> dict[str, Any]:
    """Tokens and cost per hour and per day over the last `hours` hours (the current hour
    included, so far), and the current rate: the last complete hour and the current one."""
    hours = checks.whole_param(query, "hours", 1, MAX_BURN_HOURS, 24)
    async with connection(request) as conn:
        return await burn_rate_report(conn, scope, hours, datetime.now(UTC))


async def burn_rate_report(conn: asyncpg.Connection, scope: Scope, hours: int,
                           now: datetime) -> dict[str, Any]:
    """`GET /api/analytics/burn-rate`'s answer."""
    current = truncate(now, "hour")
    start = current - timedelta(hours=hours - 1)
    rows = await analytics.rollup(conn, scope, min(start, current - timedelta(hours=1)),
                                  current + timedelta(hours=1), unit="hour", keys=("provider",))
    window, recent = Totals(), Totals()
    providers: dict[str, Totals] = defaultdict(Totals)
    hourly = {bucket: Totals() for bucket in buckets(start, current + timedelta(hours=1), "hour")}
    for row in rows:
        if row["bucket"] >= start:
            for totals in (window, providers[row["provider"]],
                           hourly.setdefault(row["bucket"], Totals())):
                totals.add(row)
        if row["bucket"] >= current - timedelta(hours=1):
            recent.add(row)
    elapsed = max(Decimal((now - start).total_seconds()), Decimal(1)) / 3600
    recent_hours = 1 + Decimal((now - current).total_seconds()) / 3600
    return {
        "project_id": scope.project_id, "team_id": scope.team_id, "provider": scope.provider,
        "model": scope.model, "hours": hours, "window_start": start, "window_end": now,
        "window_hours": elapsed.quantize(Decimal("0.0001")),
        "total_tokens": window.tokens, "total_cost": window.cost,
        "requests": window.requests,
        "burn_rate": _rates(window, elapsed),
        "current_rate": _rates(recent, recent_hours),
        "by_provider": {name: {"total_tokens": totals.tokens, "total_cost": totals.cost,
                               **_rates(totals, elapsed)}
                        for name, totals in sorted(providers.items(),
                                                   key=lambda kv: -kv[1].cost)},
        "hourly": [{"hour": label(bucket, "hour"), "requests": totals.requests,
                    "total_tokens": totals.tokens, "cost": totals.cost}
                   for bucket, totals in sorted(hourly.items())],
    }


def _group_by(value: str) -> tuple[str, str]:
    """('time', unit) | ('key', rollup column) | ('metadata', key)."""
    if value in UNITS:
        return "time", value
    if value in COST_KEYS:
        return "key", COST_KEYS[value]
    key = value.removeprefix("metadata.")
    if not _METADATA_KEY.fullmatch(key):
        raise invalid("group_by", "must be provider, model, project, team, hour, day, week, "
                      "month, or a metadata key (metadata.<key> or a bare key such as feature)")
    return "metadata", key


async def costs(request: web.Request) -> web.Response:
    scope, query = await read_scope(request, COSTS_PARAMS)
    return exact_json(await costs_answer(request, scope, query))


async def costs_answer(request: web.Request, scope: Scope,
                       query: Query) -> dict[str, Any]:
    """Cost, tokens and requests by provider, model, project, team, period or metadata key."""
    start, end = read_range(query, datetime.now(UTC))
    raw_group = query.get("group_by", "provider")
    kind, what = _group_by(raw_group)
    if kind == "time":
        _check_hourly(what, "group_by", start, end)
    async with connection(request) as conn:
        return await costs_report(conn, scope, start, end, raw_group)


async def costs_report(conn: asyncpg.Connection, scope: Scope, start: datetime, end: datetime,
                       raw_group: str) -> dict[str, Any]:
    """`GET /api/costs`'s answer, grouped by `raw_group` (checked by the caller)."""
    kind, what = _group_by(raw_group)
    groups: dict[Any, Totals] = {}
    named: dict[int, str] = {}
    if kind == "metadata":
        for row in await analytics.metadata_groups(conn, scope, start, end, what):
            key = NO_VALUE if row["key"] is None else row["key"]
            groups.setdefault(key, Totals()).add(row)
    elif kind == "time":
        groups = {bucket: Totals() for bucket in buckets(start, end, what)}
        for row in await analytics.rollup(conn, scope, start, end, unit=what):
            groups.setdefault(row["bucket"], Totals()).add(row)
    else:
        for row in await analytics.rollup(conn, scope, start, end, keys=(what,)):
            groups.setdefault(row[what], Totals()).add(row)
    if kind == "key" and what in ("project_id", "team_id"):
        table = "projects" if what == "project_id" else "teams"
        named = await analytics.names(conn, table, [k for k in groups if k is not None])
    order = (sorted(groups.items()) if kind == "time"
             else sorted(groups.items(), key=lambda kv: (-kv[1].cost, str(kv[0]))))
    total = Totals()
    for totals in groups.values():
        total.add(totals.render())
    out: dict[str, Any] = {}
    for key, totals in order:
        entry: dict[str, Any] = {"total": totals.cost, "tokens": totals.tokens,
                                 "requests": totals.requests,
                                 "input_tokens": totals.input_tokens,
                                 "output_tokens": totals.output_tokens}
        if kind == "key" and what in ("project_id", "team_id"):
            entry["name"] = named.get(key) if key is not None else None
        text = label(key, what) if kind == "time" else (
            "unassigned" if key is None else str(key))
        out[text] = entry
    group_name = f"metadata.{what}" if kind == "metadata" else raw_group
    return {**_header(scope, start, end), "group_by": group_name,
            "total_cost": total.cost, "total_tokens": total.tokens,
            "requests": total.requests, "groups": out}


async def _budget(conn: asyncpg.Connection, scope: Scope) -> Decimal | None:
    if scope.project_id is not None:
        row = await conn.fetchrow("SELECT monthly_budget_usd FROM projects WHERE id = $1",
                                  scope.project_id)
        if row is None:
            raise NotFound(f"project {scope.project_id} does not exist")
        budget: Decimal | None = row["monthly_budget_usd"]
        return budget
    if scope.team_id is not None:
        row = await conn.fetchrow("SELECT monthly_budget_usd FROM teams WHERE id = $1",
                                  scope.team_id)
        if row is None:
            raise NotFound(f"team {scope.team_id} does not exist")
        team_budget: Decimal | None = row["monthly_budget_usd"]
        return team_budget
    return None


async def forecast(request: web.Request) -> web.Response:
    scope, _ = await read_scope(request, FORECAST_PARAMS)
    return exact_json(await forecast_answer(request, scope))


async def forecast_answer(request: web.Request, scope: Scope) -> dict[str, Any]:
    """This month's spend projected to its end (method: `analytics.forecast_month`), against
    the project's budget (the team's with `team_id`; none for everything). Months and days
    follow budgets.timezone; they are cut from hourly rollups, so in a zone with a
    fractional-hour offset the hour that straddles midnight counts for the day it starts."""
    tz_name = request.app[SETTINGS].budgets.timezone
    async with connection(request) as conn:
        return await forecast_report(conn, scope, tz_name, datetime.now(UTC))


async def forecast_report(conn: asyncpg.Connection, scope: Scope, tz_name: str,
                          now: datetime) -> dict[str, Any]:
    """`GET /api/costs/forecast`'s answer: the month around `now` in zone `tz_name`."""
    tz = ZoneInfo(tz_name)
    now = now.astimezone(tz)
    today = now.date()
    month = today.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    start, end = datetime.combine(month, time(), tz), datetime.combine(next_month, time(), tz)
    day_start = datetime.combine(today, time(), tz)
    day_length = datetime.combine(today + timedelta(days=1), time(), tz) - day_start
    elapsed = Decimal((now - day_start) / day_length)
    budget = await _budget(conn, scope)
    rows = await analytics.rollup(conn, scope, start, end, unit="day", tz=tz_name)
    daily: dict[date, Decimal] = defaultdict(lambda: ZERO)
    for row in rows:
        daily[row["bucket"].date()] = analytics.EXACT.add(daily[row["bucket"].date()],
                                                          row["cost"])
    last_day = next_month - timedelta(days=1)
    result = analytics.forecast_month(dict(daily), today, elapsed, last_day, budget)
    trend = None
    if result.daily_trend is not None:
        trend = ("rising" if result.daily_trend > 0 else
                 "falling" if result.daily_trend < 0 else "flat")
    return {
        "project_id": scope.project_id, "team_id": scope.team_id, "timezone": tz_name,
        "period_start": start, "period_end": end, "days_in_month": last_day.day,
        "days_remaining": (next_month - today).days, "days_observed": result.days_observed,
        "current_spend": result.current_spend,
        "end_of_month": {"estimated_cost": result.estimated, "low": result.low,
                         "high": result.high, "confidence": result.confidence,
                         "method": result.method, "daily_trend": result.daily_trend,
                         "trend": trend},
        "budget_impact": {"budget_limit": budget, "will_exceed_budget": result.will_exceed,
                          "probability_of_exceeding": result.probability_of_exceeding,
                          "exceeds_on": result.exceeds_on},
    }


async def teams_usage(request: web.Request) -> web.Response:
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    query = read_query(request, TEAMS_USAGE_PARAMS)
    return exact_json(await teams_usage_answer(request, who, query))


async def teams_usage_answer(request: web.Request, who: Caller,
                             query: Query) -> dict[str, Any]:
    """Spend per team (the team a project belonged to when its usage arrived)."""
    scope = scope_of(who, query)
    start, end = read_range(query, datetime.now(UTC))
    async with connection(request) as conn:
        return await teams_report(conn, scope, start, end, admin=who.admin)


async def teams_report(conn: asyncpg.Connection, scope: Scope, start: datetime, end: datetime,
                       *, admin: bool) -> dict[str, Any]:
    """`GET /api/teams/usage`'s answer (budgets and project counts for the admin only)."""
    teams: dict[int | None, Totals] = defaultdict(Totals)
    models: dict[int | None, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    info: dict[int, Any] = {}
    for row in await analytics.rollup(conn, scope, start, end, keys=("team_id", "model")):
        teams[row["team_id"]].add(row)
        models[row["team_id"]][row["model"]].add(row)
    if admin:
        listed = await conn.fetch(
            """SELECT t.id, t.name, t.monthly_budget_usd, count(p.id) AS projects
               FROM teams t LEFT JOIN projects p ON p.team_id = t.id
               WHERE $1::bigint IS NULL OR t.id = $1 GROUP BY t.id""", scope.team_id)
        info = {row["id"]: row for row in listed}
        if scope.project_id is None and scope.provider is None and scope.model is None:
            for known in info:
                teams.setdefault(known, Totals())
    else:
        named = await analytics.names(conn, "teams", [t for t in teams if t is not None])
        info = {team_id: {"name": name} for team_id, name in named.items()}
    entries = []
    for team_id, totals in sorted(teams.items(), key=lambda kv: (-kv[1].cost, str(kv[0]))):
        meta = info.get(team_id) if team_id is not None else None
        by_model = _costs(models.get(team_id, {}))
        entries.append({
            "id": team_id, "name": meta["name"] if meta else None,
            "total_cost": totals.cost, "requests": totals.requests,
            "total_tokens": totals.tokens, "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "projects": meta["projects"] if admin and meta else None,
            "monthly_budget_usd": meta["monthly_budget_usd"] if admin and meta else None,
            "top_model": next(iter(by_model), None), "by_model": by_model})
    return {**_header(scope, start, end), "teams": entries}
