"""CodingVibez's costs (`/api/costs/{provider}`, `/api/costs/all`, `/api/costs/manual`) in
its envelope. Months are UTC calendar months (`month`, `year`; default: this one).

Metered spend comes from the usage rollups; costs paid outside the gateway (manual costs,
their own table) are shown beside it under `manualCosts` and never added to it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway import analytics, checks, projects
from gateway.analytics import Scope, Totals, next_bucket, truncate
from gateway.checks import Query, invalid
from gateway.domain import canonical_provider
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.faces.codingvibez import previous_month, read_scope, usage_totals
from gateway.http.faces.envelope import envelope, freshness
from gateway.http.json import read_json

MONTH_PARAMS = ("month", "year", "project_id")
SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")
MANUAL_FIELDS = ("service", "amount", "month", "year", "category", "description",
                 "project_id")
PERCENT = Decimal("0.01")


def read_month(query: Query, now: datetime) -> datetime:
    """The first instant (UTC) of the month `month`/`year` name (default: this month)."""
    year = checks.whole_param(query, "year", 2000, 9999, now.year)
    month = checks.whole_param(query, "month", 1, 12, now.month)
    return datetime(year, month, 1, tzinfo=UTC)


async def _month_totals(request: web.Request, scope: Scope, start: datetime,
                        key: str | None) -> tuple[Totals, dict[str, Totals], datetime | None]:
    """A month's metered totals, by `key` (model or provider), and the newest row's time."""
    now_hour = truncate(datetime.now(UTC), "hour") + timedelta(hours=1)  # the rollups' grain
    end = min(next_bucket(start, "month"), now_hour)
    whole, groups = Totals(), defaultdict[str, Totals](Totals)
    async with connection(request) as conn:
        if end > start:
            for row in await analytics.rollup(conn, scope, start, end,
                                              keys=(key,) if key else ()):
                whole.add(row)
                if key:
                    groups[row[key]].add(row)
        last = await analytics.last_usage(conn, scope)
    return whole, dict(groups), last


async def _manual(request: web.Request, project_id: int | None, month: datetime,
                  service: str | None = None) -> dict[str, Any]:
    async with connection(request) as conn:
        rows = await analytics.manual_costs(conn, project_id, month.date(), month.date())
    if service is not None:
        rows = [r for r in rows if canonical_provider(r["service"].lower()) == service]
    by_service: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        by_service[row["service"]] += row["amount_usd"]
    return {"total": analytics.exact_sum(r["amount_usd"] for r in rows),
            "byService": dict(by_service), "entries": [manual_view(r) for r in rows]}


def manual_view(row: Any) -> dict[str, Any]:
    """A manual cost in the names it was given in (`amount`, `month`, `year`)."""
    return {"id": row["id"], "projectId": row["project_id"], "service": row["service"],
            "amount": row["amount_usd"], "month": row["month"].month,
            "year": row["month"].year, "category": row["category"],
            "description": row["description"], "createdAt": row["created_at"]}


def _change_percent(current: Decimal, previous: Decimal) -> Decimal | None:
    if previous == 0:
        return None
    return ((current - previous) * 100 / previous).quantize(PERCENT)


async def provider_costs(request: web.Request) -> web.Response:
    """`GET /api/costs/{provider}`: the month's and the previous month's metered cost of one
    provider, by model, its token usage and freshness."""
    provider = canonical_provider(request.match_info["provider"].lower())
    if provider == "manual":  # POST /api/costs/manual's path, not a service
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])
    if not SERVICE.fullmatch(provider):
        raise invalid("provider", "must be a provider or service name")
    scope, query = await read_scope(request, MONTH_PARAMS)
    scope = Scope(scope.project_id, scope.team_id, provider, None)
    now = datetime.now(UTC)
    month = read_month(query, now)
    current, models, last = await _month_totals(request, scope, month, "model")
    previous, _, _ = await _month_totals(request, scope, previous_month(month), None)
    return envelope(request, {
        "service": provider, "month": month.month, "year": month.year,
        "currentMonth": current.cost, "previousMonth": previous.cost,
        "change": {"percent": _change_percent(current.cost, previous.cost)},
        "breakdown": {name: totals.cost for name, totals in
                      sorted(models.items(), key=lambda kv: (-kv[1].cost, kv[0]))},
        "tokenUsage": usage_totals(current), "dataFreshness": freshness(last, now),
        "lastUpdated": last,
        "manualCosts": await _manual(request, scope.project_id, month, provider)})


async def all_costs(request: web.Request) -> web.Response:
    """`GET /api/costs/all`: the month's metered cost by provider, compared with the month
    before it."""
    scope, query = await read_scope(request, MONTH_PARAMS)
    now = datetime.now(UTC)
    month = read_month(query, now)
    current, providers, last = await _month_totals(request, scope, month, "provider")
    previous, _, _ = await _month_totals(request, scope, previous_month(month), None)
    return envelope(request, {
        "month": month.month, "year": month.year, "total": current.cost,
        "byProvider": {name: totals.cost for name, totals in
                       sorted(providers.items(), key=lambda kv: (-kv[1].cost, kv[0]))},
        "comparison": {"previousMonth": previous.cost,
                       "changePercent": _change_percent(current.cost, previous.cost)},
        "tokenUsage": usage_totals(current), "dataFreshness": freshness(last, now),
        "manualCosts": await _manual(request, scope.project_id, month)})


async def add_manual_cost(request: web.Request) -> web.Response:
    """`POST /api/costs/manual`: a cost paid outside the gateway (a subscription, say) for a
    month: `{service, amount, month, year, category?, description?}`."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    body = checks.body_object(await read_json(request))
    problems = checks.Problems()
    checks.unknown_fields(body, MANUAL_FIELDS, problems)
    service = checks.text(body.get("service"), "service", problems, max_chars=100, strip=True,
                          message="is required: 1 to 100 characters")
    amount = checks.money(body.get("amount"), "amount", problems, high=projects.MAX_BUDGET_USD,
                          message="is required: USD, 0 or more")
    today = datetime.now(UTC)
    month = checks.whole(body.get("month", today.month), "month", problems, 1, 12)
    year = checks.whole(body.get("year", today.year), "year", problems, 2000, 9999)
    category = checks.text(body.get("category", ""), "category", problems, max_chars=200,
                           min_chars=0)
    description = checks.text(body.get("description", ""), "description", problems,
                              max_chars=2000, min_chars=0)
    if body.get("project_id") is not None:
        checks.ident(body["project_id"], "project_id", problems)
    problems.raise_if_any("invalid manual cost: ")
    project_id = who.project_id(body.get("project_id"), denied="adds costs only for it")
    assert service is not None and amount is not None and month and year
    async with connection(request) as conn:
        await projects.get_project(conn, project_id)  # 404 when missing
        row = await analytics.add_manual_cost(conn, project_id, service, amount,
                                              date(year, month, 1), category or "",
                                              description or "")
    return envelope(request, manual_view(row), status=201)
