"""`GET /api/budgets/status`: this month's spend against the budget, and where it is heading."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway import checks
from gateway.budgets import month_start
from gateway.errors import NotFound
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.json import json_response
from gateway.keys import SETTINGS


async def _project_id(request: web.Request) -> int:
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    query = checks.read_query(request.query, ("project_id",), {"projectId": "project_id"})
    return who.project_id(checks.id_param(query, "project_id"))


async def budget_status(request: web.Request) -> web.Response:
    project_id = await _project_id(request)
    tz = ZoneInfo(request.app[SETTINGS].budgets.timezone)
    now = datetime.now(tz)
    start_day = month_start(now, tz)
    start = datetime.combine(start_day, time(), tz)
    end = datetime.combine((start_day + timedelta(days=32)).replace(day=1), time(), tz)
    async with connection(request) as conn:
        row = await conn.fetchrow(
            """SELECT p.monthly_budget_usd AS budget,
                      (SELECT coalesce(sum(u.cost_usd), 0) FROM usage_records u
                        WHERE u.project_id = p.id AND u.started_at >= $2
                          AND u.started_at < $3) AS spend
               FROM projects p WHERE p.id = $1""", project_id, start, end)
    if row is None:
        raise NotFound(f"project {project_id} does not exist")
    spend: Decimal = row["spend"]
    budget: Decimal | None = row["budget"]
    elapsed = max((now - start) / (end - start), 1e-6)
    projected = spend / Decimal(elapsed)
    return json_response({
        "project_id": project_id,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "current_spend": spend,
        "budget_limit": budget,
        "percentage_used": (float(spend / budget * 100) if budget else None),
        "days_remaining": (end.date() - now.date()).days,
        "projected_spend": projected.quantize(Decimal("1e-9")),
        "will_exceed_budget": (projected > budget) if budget is not None else None,
    })
