"""The reconciliation table of one provider account over a range of days: the imported
reports and the ledger read, lined up by day, model and provider project, compared
(`reconcile`), and the days outside tolerance raised once each as `reconciliation.mismatch`."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from gateway import webhooks
from gateway.pricing import PriceTable
from gateway.settings import SyncSettings
from gateway.sync import store
from gateway.sync.reconcile import ZERO, Day, Line, Row, Tolerance, reconcile, summarise
from gateway.sync.records import GATEWAY_ACCOUNT, TOKEN_TYPES, account_project

EVENT = "reconciliation.mismatch"
Key = tuple[date, str, str]


@dataclass(frozen=True, slots=True)
class Report:
    account: str
    provider: str
    rows: list[Row]
    days: list[Day]


def tolerance(settings: SyncSettings) -> Tolerance:
    return Tolerance(settings.tolerance_usd, settings.tolerance_percent)


async def build(conn: asyncpg.Connection, prices: PriceTable, settings: SyncSettings,
                account: str, provider: str, start: date, end: date) -> Report:
    """Read both sides of start..end and compare them."""
    # The map names the gateway's own organisation's projects; a project's own account is
    # compared per day and model.
    mapping = settings.project_map.get(provider, {}) if account == GATEWAY_ACCOUNT else {}

    def model_of(name: str) -> str:
        price = prices.get(name)
        return price.model if price is not None else name

    def project_of(provider_project: str) -> str:
        return provider_project if mapping else ""

    tokens: dict[Key, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    requests: dict[Key, int | None] = {}
    for r in await store.provider_usage(conn, account, provider, start, end):
        key = (r["day"], model_of(r["model"]), project_of(r["provider_project"]))
        for t in TOKEN_TYPES:
            tokens[key][t] += r[t]
        if r["requests"] is not None:
            requests[key] = (requests.get(key) or 0) + r["requests"]
    costs: dict[Key, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for r in await store.provider_costs(conn, account, provider, start, end):
        model = model_of(r["model"]) if r["token_type"] else ""
        costs[(r["day"], model, project_of(r["provider_project"]))][r["token_type"]] += \
            r["amount"]
    costed_days = {key[0] for key in costs}
    ledger: dict[Key, asyncpg.Record] = {}
    ledger_tokens: dict[Key, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    ledger_cost: dict[Key, Decimal] = defaultdict(Decimal)
    ledger_requests: dict[Key, int] = defaultdict(int)
    for r in await store.ledger_usage(conn, account, provider, start, end):
        key = (r["day"], model_of(r["model"]), mapping.get(r["project"] or "", "")
               if mapping else "")
        ledger[key] = r
        for t in TOKEN_TYPES:
            ledger_tokens[key][t] += r[t]
        ledger_cost[key] += r["cost"]
        ledger_requests[key] += r["requests"]
    lines = []
    for key in sorted({*tokens, *costs, *ledger}):
        lines.append(Line(
            day=key[0], model=key[1], project=key[2], provider_tokens=dict(tokens.get(key, {})),
            provider_costs=dict(costs.get(key, {})), provider_requests=requests.get(key),
            ledger_tokens=dict(ledger_tokens.get(key, {})),
            ledger_cost=ledger_cost.get(key, ZERO), ledger_requests=ledger_requests.get(key, 0),
            gateway_prices=_gateway_prices(prices, key[1]),
            provider_costs_reported=key[0] in costed_days))
    rows = reconcile(lines)
    return Report(account, provider, rows, summarise(rows, tolerance(settings)))


def _gateway_prices(prices: PriceTable, model: str) -> dict[str, Decimal]:
    price = prices.get(model)
    if price is None:
        return {}
    write = price.input if price.cache_write_input is None else price.cache_write_input
    return {"input": price.input, "cache_read": price.cached_input, "cache_write": write,
            "output": price.output}


async def raise_mismatches(conn: asyncpg.Connection, report: Report, settings: SyncSettings,
                           now: datetime | None = None) -> list[date]:
    """Queue one signed `reconciliation.mismatch` per settled day outside tolerance, once
    per (account, provider, day) however often it is judged; answers the days raised."""
    now = now or datetime.now(UTC)
    settled = timedelta(hours=settings.settle_hours)
    raised = []
    project_id = account_project(report.account)
    for day in report.days:
        ends = datetime(day.day.year, day.day.month, day.day.day, tzinfo=UTC) + timedelta(days=1)
        if day.within_tolerance or ends + settled > now:
            continue
        event_id = uuid.uuid4()
        async with conn.transaction():
            fired = await conn.fetchval(
                """INSERT INTO reconciliation_alerts (account, provider, day, event_id,
                       difference_usd) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT DO NOTHING RETURNING true""",
                report.account, report.provider, day.day, event_id, day.difference)
            if fired:
                rows = [r for r in report.rows if r.line.day == day.day]
                await webhooks.enqueue(conn, EVENT, project_id, {
                    "event_id": event_id, "account": report.account,
                    "provider": report.provider, **day_view(day),
                    "models": [row_view(r) for r in rows if r.difference or r.timing]},
                    event_id=event_id)
                raised.append(day.day)
    return raised


def day_view(day: Day) -> dict[str, Any]:
    return {"day": day.day.isoformat(), "provider_cost_usd": day.provider_cost,
            "ledger_cost_usd": day.ledger_cost, "difference_usd": day.difference,
            "untracked_usd": day.untracked, "price_difference_usd": day.price_difference,
            "timing_usd": day.timing, "over_recorded_usd": day.over_recorded,
            "unexplained_usd": day.unexplained, "tolerance_usd": day.tolerance,
            "within_tolerance": day.within_tolerance}


def row_view(row: Row) -> dict[str, Any]:
    line = row.line
    return {"day": line.day.isoformat(), "model": line.model, "provider_project": line.project,
            "provider_tokens": _tokens(line.provider_tokens),
            "ledger_tokens": _tokens(line.ledger_tokens),
            "provider_requests": line.provider_requests, "ledger_requests": line.ledger_requests,
            "provider_cost_usd": row.provider_cost, "ledger_cost_usd": line.ledger_cost,
            "provider_cost_reported": line.provider_costs_reported,
            "difference_usd": row.difference, "untracked_usd": row.untracked,
            "price_difference_usd": row.price_difference, "timing_usd": row.timing,
            "over_recorded_usd": row.over_recorded,
            "price_differences": [
                {"token_type": p.token_type, "gateway_per_million": p.gateway_per_million,
                 "provider_per_million": p.provider_per_million,
                 "difference_per_million": p.difference_per_million,
                 "difference_percent": p.difference_percent, "ledger_tokens": p.tokens}
                for p in row.price_differences]}


def _tokens(tokens: Mapping[str, int]) -> dict[str, int]:
    return {t: tokens.get(t, 0) for t in TOKEN_TYPES}
