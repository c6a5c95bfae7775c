"""CodingVibez's API face (`/api/tokens*`, `/api/analytics`, `/api/projections`,
`/api/dashboard`): thin handlers that reshape the gateway's own analytics reports into its
`{success, data, timestamp, requestId}` envelope, camelCase, with its data freshness.

Its parameter names are accepted (`startDate`, `endDate`, `groupBy`, `service`,
`billingStartDate`, `billingEndDate`); `service`/`provider` `google` is `gemini`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway import alerts, analytics
from gateway.analytics import Scope, Totals, truncate
from gateway.http import analytics as reports
from gateway.http import track
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.faces.envelope import camel, envelope, freshness
from gateway.http.json import read_json

ALIASES = {**reports.ALIASES, "billingStartDate": "start_date", "billingEndDate": "end_date"}
TOKENS_PARAMS = (*reports.RANGE_PARAMS, *reports.SCOPE_PARAMS)
AVERAGE = Decimal("0.000000001")
TOP_MODELS = 5


async def read_scope(request: web.Request, accepted: tuple[str, ...]
                     ) -> tuple[Scope, dict[str, str]]:
    """Authenticate (and admit: the face's limits, the plan's), then the scope and query,
    under CodingVibez's parameter names too."""
    return await reports.read_scope(request, accepted, ALIASES)


def month_start(now: datetime) -> datetime:
    return truncate(now, "month")


def previous_month(start: datetime) -> datetime:
    return truncate(start - timedelta(days=1), "month")


def usage_totals(totals: Totals) -> dict[str, Any]:
    return {"inputTokens": totals.input_tokens, "cachedInputTokens": totals.cached_input_tokens,
            "outputTokens": totals.output_tokens, "totalTokens": totals.tokens,
            "requests": totals.requests, "cost": totals.cost}


async def track_usage(request: web.Request) -> web.Response:
    """`POST /api/tokens/track`: `POST /api/track`'s rules and ledger, its envelope."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    recorded = await track.record_tracked(request, who,
                                          track.parse_track(await read_json(request)))
    return envelope(request, {
        "id": recorded["id"], "provider": recorded["provider"], "model": recorded["model"],
        "inputTokens": recorded["input_tokens"], "outputTokens": recorded["output_tokens"],
        "cachedTokens": recorded["cached_tokens"], "totalTokens": recorded["total_tokens"],
        "cost": recorded["total_cost"], "costSource": recorded["cost_source"],
        "pricedByFallback": recorded["priced_by_fallback"],
        "timestamp": recorded["timestamp"], "projectId": recorded["project_id"]})


async def tokens(request: web.Request) -> web.Response:
    """`GET /api/tokens`: usage by provider and model over the billing period (default: this
    month so far), when it was last updated and how fresh that is."""
    scope, query = await read_scope(request, TOKENS_PARAMS)
    now = datetime.now(UTC)
    if "start_date" not in query and "end_date" not in query:
        query["start_date"] = month_start(now).isoformat()
    start, end = reports.read_range(query, now)
    async with connection(request) as conn:
        rows = await analytics.rollup(conn, scope, start, end, keys=("provider", "model"))
        last = await analytics.last_usage(conn, scope)
    entries = []
    for row in sorted(rows, key=lambda r: (-r["cost"], r["provider"], r["model"])):
        totals = Totals()
        totals.add(row)
        entries.append({"provider": row["provider"], "model": row["model"],
                        **usage_totals(totals)})
    return envelope(request, {"tokens": entries, "lastUpdated": last,
                              "dataFreshness": freshness(last, now),
                              "billingPeriod": {"start": start, "end": end}})


async def stats(request: web.Request) -> web.Response:
    """`GET /api/tokens/stats`: this month's budget (the whole project's spend against it),
    the end-of-month projection and usage (of `provider` alone when given)."""
    scope, _ = await read_scope(request, reports.FORECAST_PARAMS)
    report = await reports.forecast_answer(request, scope)
    whole = report
    if scope.provider is not None or scope.model is not None:
        whole = await reports.forecast_answer(
            request, dataclasses.replace(scope, provider=None, model=None))
    limit, used = whole["budget_impact"]["budget_limit"], whole["current_spend"]
    async with connection(request) as conn:
        rows = await analytics.rollup(conn, scope, report["period_start"],
                                      report["period_end"])
    totals = Totals()
    for row in rows:
        totals.add(row)
    end_of_month = report["end_of_month"]
    return envelope(request, {
        "budget": {"limit": limit, "used": used,
                   "remaining": None if limit is None else max(limit - used, Decimal(0))},
        "projections": {"endOfMonth": end_of_month["estimated_cost"],
                        "trend": end_of_month["trend"],
                        "confidence": end_of_month["confidence"]},
        "usage": {"totalTokens": totals.tokens, "totalCost": totals.cost,
                  "requests": totals.requests},
        "provider": scope.provider, "periodStart": report["period_start"],
        "periodEnd": report["period_end"]})


async def timeseries(request: web.Request) -> web.Response:
    """`GET /api/tokens/timeseries`: tokens (by default) per day, gaps as zeros."""
    scope, query = await read_scope(request, reports.TIMESERIES_PARAMS)
    query.setdefault("metric", "tokens")
    report = await reports.timeseries_answer(request, scope, query)
    return envelope(request, {
        "series": [{"date": point["date"], "totalTokens": point["total_tokens"],
                    "cost": point["cost"], "requests": point["requests"],
                    "value": point["value"]} for point in report["series"]],
        "aggregations": camel(report["aggregations"]), "metric": report["metric"],
        "interval": report["interval"], "startDate": report["start_date"],
        "endDate": report["end_date"], "provider": report["provider"]})


async def burn_rate(request: web.Request) -> web.Response:
    """`GET /api/tokens/burn-rate`: rates over the last `hours`, and by service."""
    scope, query = await read_scope(request, reports.BURN_RATE_PARAMS)
    report = await reports.burn_rate_answer(request, scope, query)
    return envelope(request, camel({
        "burn_rate": report["burn_rate"], "current_rate": report["current_rate"],
        "by_service": report["by_provider"], "hours": report["hours"],
        "total_tokens": report["total_tokens"], "total_cost": report["total_cost"],
        "window_start": report["window_start"], "window_end": report["window_end"],
        "service": report["provider"]}))


async def analytics_series(request: web.Request) -> web.Response:
    """`GET /api/analytics`: cost, tokens and requests per period, totals and averages."""
    scope, query = await read_scope(request, reports.USAGE_PARAMS)
    report = await reports.usage_answer(request, scope, query)
    periods = report["periods"]
    series = [{"date": p["period"], "cost": p["cost"], "tokens": p["total_tokens"],
               "requests": p["requests"]} for p in periods]
    count = Decimal(max(len(series), 1))
    totals = {"cost": report["total_cost"], "tokens": report["total_tokens"],
              "requests": report["total_requests"], "inputTokens": report["input_tokens"],
              "outputTokens": report["output_tokens"], "errors": report["errors"]}
    return envelope(request, {
        "series": series, "totals": totals,
        "averages": {name: (Decimal(totals[name]) / count).quantize(AVERAGE)
                     for name in ("cost", "tokens", "requests")},
        "groupBy": report["group_by"], "startDate": report["start_date"],
        "endDate": report["end_date"]})


async def projections(request: web.Request) -> web.Response:
    """`GET /api/projections`: the end-of-month forecast and its budget impact."""
    scope, _ = await read_scope(request, reports.FORECAST_PARAMS)
    return envelope(request, camel(await reports.forecast_answer(request, scope)))


async def dashboard(request: web.Request) -> web.Response:
    """`GET /api/dashboard`: this and last month's cost, token usage, top models, the budget
    and the latest fired alerts; costs paid outside the gateway shown beside, not added."""
    scope, _ = await read_scope(request, reports.FORECAST_PARAMS)
    report = await reports.forecast_answer(request, scope)
    now = datetime.now(UTC)
    this_month = month_start(now)
    last_month = previous_month(this_month)
    current, previous = Totals(), Totals()
    models: dict[str, Totals] = {}
    async with connection(request) as conn:
        for row in await analytics.rollup(conn, scope, this_month, now, keys=("model",)):
            current.add(row)
            models.setdefault(row["model"], Totals()).add(row)
        for row in await analytics.rollup(conn, scope, last_month, this_month):
            previous.add(row)
        fired = ([] if scope.project_id is None else
                 (await alerts.alert_state(conn, scope.project_id, limit=10))["fired"])
        manual = await analytics.manual_costs(conn, scope.project_id, this_month.date(),
                                              this_month.date())
        last = await analytics.last_usage(conn, scope)
    ranked = sorted(models.items(), key=lambda kv: (-kv[1].cost, kv[0]))[:TOP_MODELS]
    impact = report["budget_impact"]
    return envelope(request, {
        "totalCosts": {"currentMonth": current.cost, "previousMonth": previous.cost},
        "tokenUsage": usage_totals(current),
        "topModels": [{"model": name, "cost": totals.cost, "tokens": totals.tokens,
                       "requests": totals.requests} for name, totals in ranked],
        "budgetStatus": {"limit": impact["budget_limit"], "used": report["current_spend"],
                         "willExceedBudget": impact["will_exceed_budget"],
                         "projectedSpend": report["end_of_month"]["estimated_cost"]},
        "alerts": camel(fired),
        "manualCosts": {"currentMonth": analytics.exact_sum(r["amount_usd"] for r in manual)},
        "dataFreshness": freshness(last, now), "lastUpdated": last})
