"""`GET /api/health/live` and `GET /api/health/ready`, exactly in the seed's schema."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway import SERVICE_NAME
from gateway.keys import READINESS


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def live(request: web.Request) -> web.Response:
    return web.json_response(
        {"ok": True, "service": SERVICE_NAME, "status": "live", "checkedAt": _now()})


async def ready(request: web.Request) -> web.Response:
    ok, checks = await request.app[READINESS].check()
    return web.json_response(
        {"ok": ok, "service": SERVICE_NAME,
         "status": ("not_ready" if not ok else
                    "degraded" if checks["ledger"]["status"] == "degraded" else "ready"),
         "checks": checks, "checkedAt": _now()},
        status=200 if ok else 503)
