"""What the dashboard's pages show, computed by the JSON APIs' own report functions, so each
figure equals the API's to the last digit (`format_usd`, as the JSON carries it)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from gateway.analytics import Scope, Totals, rollup, truncate
from gateway.analytics import names as project_names
from gateway.budgets import month_start
from gateway.http.analytics import (
    burn_rate_report,
    costs_report,
    forecast_report,
    timeseries_report,
    usage_report,
)
from gateway.pricing import format_usd

HEADLINE = ("month_spend_usd", "month_budget_usd", "requests_today", "errors_today",
            "forecast_month_usd", "burn_rate_usd_per_day")
TOP = 8  # rows in each "top" table
DAYS = 30  # the overview's and a project's chart and top tables


def exact(value: Decimal | int | None) -> str:
    """A figure's `data-value`: the JSON APIs' exact digits ("" for none)."""
    if value is None:
        return ""
    return format_usd(value) if isinstance(value, Decimal) else str(value)


def usd(value: Decimal | None) -> str:
    """A figure for people: cents above a dollar, six decimals below, "—" for none."""
    if value is None:
        return "\u2014"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    text = f"{value:.6f}".rstrip("0")
    return f"${text}{'00' if text.endswith('.') else ''}"


async def _budget_total(conn: asyncpg.Connection) -> Decimal | None:
    """Every project's monthly budget added up (None while none has one)."""
    total: Decimal | None = await conn.fetchval(
        "SELECT sum(monthly_budget_usd) FROM projects WHERE monthly_budget_usd IS NOT NULL")
    return total


async def headline(conn: asyncpg.Connection, scope: Scope, tz_name: str,
                   now: datetime) -> dict[str, Decimal | int | None]:
    """Month-to-date spend, budget, today's requests and errors (UTC day, as
    `/api/analytics/usage?start_date=<today>&end_date=<today>`), forecast and burn rate."""
    forecast = await forecast_report(conn, scope, tz_name, now)
    if scope.project_id is None:
        budget = await _budget_total(conn)
    else:
        budget = forecast["budget_impact"]["budget_limit"]
    today = truncate(now.astimezone(UTC), "day")
    usage = await usage_report(conn, scope, today, today + timedelta(days=1), "day")
    burn = await burn_rate_report(conn, scope, 24, now)
    return {
        "month_spend_usd": forecast["current_spend"], "month_budget_usd": budget,
        "requests_today": usage["total_requests"], "errors_today": usage["errors"],
        "forecast_month_usd": forecast["end_of_month"]["estimated_cost"],
        "burn_rate_usd_per_day": burn["burn_rate"]["cost_per_day"],
    }


def live(figures: dict[str, Decimal | int | None]) -> dict[str, Any]:
    """The figures as the pages poll them: exact value and display text."""
    return {name: {"value": exact(value), "text": _text(value)}
            for name, value in figures.items()}


def _text(value: Decimal | int | None) -> str:
    return usd(value) if not isinstance(value, int) else f"{value:,}"


def month_bounds(tz_name: str, now: datetime) -> tuple[datetime, datetime]:
    """The budget month around `now` (budgets.timezone's calendar): [start, end)."""
    tz = ZoneInfo(tz_name)
    start = datetime.combine(month_start(now, tz), time(), tz)
    return start, datetime.combine((start.date() + timedelta(days=32)).replace(day=1), time(),
                                   tz)


async def month_spend_by_project(conn: asyncpg.Connection, scope: Scope, tz_name: str,
                                 now: datetime) -> dict[int, Decimal]:
    """This budget month's spend of every project, in one rollup query (each equals the
    project's `/api/costs/forecast` `current_spend`: the same rows, the same month)."""
    start, end = month_bounds(tz_name, now)
    report = await costs_report(conn, scope, start, end, "project")
    return {int(key): entry["total"] for key, entry in report["groups"].items()
            if key != "unassigned"}


def last_days(now: datetime, days: int = DAYS) -> tuple[datetime, datetime]:
    """The last `days` whole UTC days, today included: [start, end). Whole days read only
    usage_daily (today's row grows as traffic lands), never the hourly edges of a range that
    starts mid-day; it is `?start_date=<first day>&end_date=<today>` in the JSON APIs."""
    today = truncate(now.astimezone(UTC), "day")
    return today - timedelta(days=days - 1), today + timedelta(days=1)


async def spend(conn: asyncpg.Connection, scope: Scope, now: datetime) -> dict[str, Any]:
    """The last 30 days: spend per day and the top providers, models (and projects)."""
    start, end = last_days(now)
    series = await timeseries_report(conn, scope, start, end, "cost", "day")
    return {"start": start, "end": end, "series": series["series"],
            "total": series["aggregations"]["total"],
            "top": await _top(conn, scope, start, end)}


async def _top(conn: asyncpg.Connection, scope: Scope, start: datetime,
               end: datetime) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The biggest spenders by provider, model and project: one rollup read grouped three
    ways, each ranked as `/api/costs?group_by=...` ranks it (cost, then key)."""
    groups: dict[str, dict[Any, Totals]] = {"provider": {}, "model": {}, "project": {}}
    for row in await rollup(conn, scope, start, end, keys=("project_id", "provider", "model")):
        for group, key in (("provider", row["provider"]), ("model", row["model"]),
                           ("project", row["project_id"])):
            groups[group].setdefault(key, Totals()).add(row)
    names = await project_names(conn, "projects", list(groups["project"]))
    top = {}
    for group, totals in groups.items():
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1].cost, str(kv[0])))[:TOP]
        top[group] = [(str(key), {"total": t.cost, "requests": t.requests,
                                  "name": names.get(key) if group == "project" else None})
                      for key, t in ranked]
    return top
