"""CodingVibez's health and status (`/api/health`, `/api/tracking-health`, `/api/status`)
in its envelope, from the gateway's readiness, ledger and provider integrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway import analytics, checks
from gateway.errors import ServiceUnavailable
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.faces.codingvibez import read_scope
from gateway.http.faces.envelope import camel, envelope, freshness
from gateway.http.faces.integrations import integrations
from gateway.http.sync import sync_status
from gateway.keys import LEDGER, READINESS
from gateway.sync.records import GATEWAY_ACCOUNT, project_account

FLUSH_LAG_DEGRADED_S = 60.0


async def health(request: web.Request) -> web.Response:
    """`GET /api/health` (public): healthy, degraded (serving; usage rows wait as dead
    letters), or 503 while the database is unreachable or the gateway drains."""
    ok, found = await request.app[READINESS].check()
    database = found["database"]
    services = camel({"ledger": found["ledger"], "key_invalidation": found["key_invalidation"],
                      "tokens": found["tokens"], "draining": found["draining"]})
    if not ok:  # its DATABASE_ERROR while the database is what fails
        raise ServiceUnavailable(
            "unhealthy: " + ("draining" if found["draining"] else
                             database.get("error", "database")),
            code="draining" if database["ok"] else "database_unavailable",
            details={"services": services})
    status = "degraded" if found["ledger"]["status"] == "degraded" else "healthy"
    return envelope(request, {
        "status": status,
        "database": {"healthy": database["ok"], "latencyMs": database.get("latency_ms")},
        "services": services})


def tracking_status(ledger: Any) -> str:
    if ledger.dead_letters_waiting or ledger.flush_lag_s > FLUSH_LAG_DEGRADED_S:
        return "degraded"
    return "healthy"


async def tracking_health(request: web.Request) -> web.Response:
    """`GET /api/tracking-health`: this process's usage buffer (rows queued for the ledger,
    when it last flushed), the freshness of the caller's data and recent write errors."""
    scope, _ = await read_scope(request, ("project_id",))
    ledger = request.app[LEDGER]
    now = datetime.now(UTC)
    async with connection(request) as conn:
        last = await analytics.last_usage(conn, scope)
    return envelope(request, {
        "status": tracking_status(ledger),
        "buffer": {"size": ledger.pending, "lastFlush": datetime.fromtimestamp(
            ledger.last_flush, UTC), "flushLagSeconds": round(ledger.flush_lag_s, 3),
                   "spillBytes": ledger.spill_bytes},
        "dataFreshness": freshness(last, now), "lastUpdated": last,
        "errors": {"failedFlushes": ledger.failures, "rejectedRows": ledger.rejected,
                   "deadLettersWaiting": ledger.dead_letters_waiting}})


async def status(request: web.Request) -> web.Response:
    """`GET /api/status`: each provider integration, configured and reachable, and the state
    of the imports of its bills."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    query = checks.read_query(request.query, ("project_id",), {"projectId": "project_id"})
    return envelope(request, await status_data(
        request, who.project_filter(checks.id_param(query, "project_id"))))


async def status_data(request: web.Request, project_id: int | None) -> dict[str, Any]:
    """The integrations CodingVibez's status shows (`connected`, `lastSync`, `status`), and
    the imports of the providers' bills (`billSync`: the admin sees every account's, a
    project its own admin key's and the gateway's)."""
    found = await integrations(request, project_id)
    accounts = ({GATEWAY_ACCOUNT} if project_id is None else
                {GATEWAY_ACCOUNT, project_account(project_id)})
    syncs = [s for s in await sync_status(request.app)
             if project_id is None or s["account"] in accounts]

    def last_sync(provider: str) -> Any:  # the caller's own account first, else the gateway's
        mine = [s for s in syncs if s["provider"] == provider and s["last_success_at"]]
        mine.sort(key=lambda s: s["account"] == GATEWAY_ACCOUNT)
        return mine[0]["last_success_at"] if mine else None

    return {"projectId": project_id, "integrations": {
        name: {"connected": entry["configured"], "lastSync": last_sync(name),
               "status": entry["status"], "reachable": entry["reachable"],
               "breaker": entry["breaker"], "gatewayKey": entry["gateway_key"],
               "projectKeys": camel(entry["project_keys"])}
        for name, entry in found.items()}, "billSync": camel(syncs)}
