"""The providers' own bills: the seed's `POST /api/sync` and
`POST /api/sync-organization-usage` (admin token, in CodingVibez's envelope),
`GET /api/reconciliation`, and `sync_status`, which CodingVibez's `GET /api/status` shows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway import checks
from gateway.errors import BadRequest, Conflict
from gateway.http.access import Access, caller
from gateway.http.faces.envelope import envelope
from gateway.http.json import json_response, read_json
from gateway.keys import PRICES, SYNC
from gateway.sync import integrations, report, store
from gateway.sync.importer import Outcome
from gateway.sync.records import GATEWAY_ACCOUNT, project_account
from gateway.sync.scheduler import SyncBusy, last_days, lock_held

MAX_DAYS = 400


def _day(value: Any, field: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise BadRequest(f"{field} must be a date (YYYY-MM-DD)", details={"field": field})


def _range(start: date | None, end: date | None, default: tuple[date, date]) -> tuple[date, date]:
    start, end = start or default[0], end or default[1]
    if end < start:
        raise BadRequest("end_date is before start_date", details={"field": "end_date"})
    if (end - start).days >= MAX_DAYS:
        raise BadRequest(f"at most {MAX_DAYS} days at once", details={"field": "start_date"})
    return start, end


def _providers(value: Any, field: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(p, str) and p in integrations.PROVIDERS for p in items):
        raise BadRequest(f"{field} must name {' or '.join(integrations.PROVIDERS)}",
                         details={"field": field})
    return list(items)


async def _sync_body(request: web.Request, accepted: tuple[str, ...]) -> dict[str, Any]:
    """An admin's sync request: a JSON object (or none) of `accepted` fields, `force` a
    boolean (400 naming each problem)."""
    await caller(request, allow=Access.ADMIN)
    body = checks.body_object(await read_json(request, required=False))
    problems = checks.Problems()
    checks.unknown_fields(body, accepted, problems)
    if "force" in body:
        checks.flag(body["force"], "force", problems)
    problems.raise_if_any()
    return body


async def _run(request: web.Request, providers: list[str], body: dict[str, Any]) -> web.Response:
    force = body.get("force", False)
    runner = request.app[SYNC]
    start, end = _range(_day(body.get("start_date"), "start_date"),
                        _day(body.get("end_date"), "end_date"), last_days(runner.settings))
    try:
        outcomes = await runner.sync(providers, start, end, force=force)
    except SyncBusy:
        raise Conflict("a sync is already running (on this or another replica); try again "
                       "when it is done", code="sync_in_progress") from None
    return envelope(request, {"results": _results(providers, outcomes),
                               "syncedAt": datetime.now(UTC).isoformat()})


def _results(providers: Iterable[str], outcomes: list[Outcome]) -> dict[str, Any]:
    out: dict[str, Any] = {p: {"status": "not_configured", "records": 0} for p in providers}
    for o in outcomes:
        name = (o.integration.provider if o.integration.account == GATEWAY_ACCOUNT
                else f"{o.integration.provider}@{o.integration.account}")
        out[name] = o.view()
    return out


async def sync_all(request: web.Request) -> web.Response:
    """`{"providers": ["openai", "anthropic"], "force": false}` (both optional; also
    `start_date`/`end_date` to backfill): import now, answer what each import stored."""
    body = await _sync_body(request, ("providers", "force", "start_date", "end_date"))
    providers = _providers(body.get("providers", list(integrations.PROVIDERS)), "providers")
    return await _run(request, providers, body)


async def sync_organization_usage(request: web.Request) -> web.Response:
    """`{"service": "openai", "force": false}`: one provider's organisation reports."""
    body = await _sync_body(request, ("service", "force", "start_date", "end_date"))
    if "service" not in body:
        raise BadRequest("service is required: openai or anthropic",
                         details={"field": "service"})
    return await _run(request, _providers(body["service"], "service"), body)


async def sync_status(app: web.Application) -> list[dict[str, Any]]:
    """Each integration: configured (an admin key), its state, last success, last error."""
    runner = app[SYNC]
    async with runner.pool_connection() as conn:
        states = {(s["account"], s["provider"]): s for s in await store.all_states(conn)}
        found, broken = await integrations.stored(conn, runner.box, runner.settings)
        syncing = await lock_held(conn)
    keyed = integrations.configured(runner.settings) + found
    names = {(i.account, i.provider) for i in keyed} | set(states) | {
        (k.rsplit(":", 1)[0], k.rsplit(":", 1)[1]) for k in broken}
    out = []
    for account, provider in sorted(names, key=lambda n: (n[1], n[0] != GATEWAY_ACCOUNT, n[0])):
        s = states.get((account, provider))
        out.append({
            "provider": provider, "account": account,
            "connected": (account, provider) in {(i.account, i.provider) for i in keyed},
            "key_problem": broken.get(f"{account}:{provider}"),
            # 'running' with no sync holding the lock: the replica that ran it stopped.
            "status": ("never_synced" if not s else "interrupted"
                       if s["state"] == "running" and not syncing else s["state"]),
            "last_started_at": s and s["last_started_at"], "last_success_at": s and
            s["last_success_at"], "last_error": s and s["last_error"],
            "last_error_at": s and s["last_error_at"],
            "range": None if not s or s["run_start"] is None else
            {"start_date": s["run_start"].isoformat(), "end_date": s["run_end"].isoformat(),
             "done_through": s["cursor"].isoformat() if s["cursor"] else None},
            "records": s["records"] if s else 0})
    return out


async def reconciliation(request: web.Request) -> web.Response:
    """`?start_date&end_date&provider`: each day, model and provider project of each
    provider account, provider against ledger, the differences named, days judged. A
    project key sees its own account (the organisation its own provider keys bill)."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    query = checks.read_query(request.query, ("start_date", "end_date", "provider"))
    today = datetime.now(UTC).date()
    start, end = _range(_day(query.get("start_date"), "start_date"),
                        _day(query.get("end_date"), "end_date"),
                        (today - timedelta(days=29), today))
    provider = query.get("provider")
    if provider is not None:
        _providers(provider, "provider")
    runner = request.app[SYNC]
    settings = runner.settings
    tables = []
    async with runner.pool_connection() as conn:
        for account, name in await store.accounts(conn, provider):
            if not who.admin and account != project_account(who.key.project.id):
                continue
            table = await report.build(conn, request.app[PRICES], settings, account, name,
                                       start, end)
            tables.append(_table_view(table))
    return json_response({
        "start_date": start.isoformat(), "end_date": end.isoformat(),
        "tolerance": {"usd": settings.tolerance_usd, "percent": settings.tolerance_percent},
        "providers": tables})


def _table_view(table: report.Report) -> dict[str, Any]:
    prices: dict[tuple[str, str], dict[str, Any]] = {}
    for row in table.rows:
        for p in row.price_differences:
            seen = prices.setdefault((row.line.model, p.token_type), {
                "model": row.line.model, "token_type": p.token_type,
                "gateway_per_million": p.gateway_per_million,
                "provider_per_million": p.provider_per_million,
                "difference_per_million": p.difference_per_million,
                "difference_percent": p.difference_percent, "ledger_tokens": 0})
            seen["ledger_tokens"] += p.tokens
    days = [report.day_view(d) for d in table.days]
    totals = {k: sum((d[k] for d in days), Decimal(0)) for k in (
        "provider_cost_usd", "ledger_cost_usd", "difference_usd", "untracked_usd",
        "price_difference_usd", "timing_usd", "over_recorded_usd")}
    return {"provider": table.provider, "account": table.account, "totals": totals,
            "days_outside_tolerance": sum(not d["within_tolerance"] for d in days),
            "price_differences": sorted(prices.values(),
                                        key=lambda p: (p["model"], p["token_type"])),
            "days": days, "rows": [report.row_view(r) for r in table.rows]}
