"""Admin: the ledger's dead letters, usage rows PostgreSQL refused, kept to be replayed."""

from __future__ import annotations

from aiohttp import web

from gateway import checks
from gateway.http.access import Access, caller
from gateway.http.analytics import exact_json
from gateway.keys import LEDGER

MAX_LIST = 1000


def _limit(request: web.Request, default: int) -> int:
    query = checks.read_query(request.query, ("limit",))
    return checks.whole_param(query, "limit", 1, MAX_LIST, default)


async def list_dead_letters(request: web.Request) -> web.Response:
    """`GET /api/admin/ledger/dead-letters?limit=N`: the waiting ones, oldest first."""
    await caller(request, allow=Access.ADMIN)
    ledger = request.app[LEDGER]
    letters = await ledger.dead_letters(_limit(request, 100))
    return exact_json({"waiting": await ledger.count_dead_letters(), "dead_letters": [
        {"request_id": str(r["request_id"]), "project_id": r["project_id"],
         "error": r["error"], "failures": r["failures"], "failed_at": r["failed_at"],
         "row": r["row_json"]} for r in letters]})


async def replay_dead_letters(request: web.Request) -> web.Response:
    """`POST /api/admin/ledger/dead-letters/replay?limit=N`: try them again now."""
    await caller(request, allow=Access.ADMIN)
    return exact_json(await request.app[LEDGER].replay_dead_letters(_limit(request, MAX_LIST)))
