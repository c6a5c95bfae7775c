"""Which providers a project can reach: one function, used by meterr's `GET /v1/providers`
and CodingVibez's `GET /api/status` (and the place later sync state joins it)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import credentials
from gateway.http.database import connection
from gateway.keys import PIPELINE, SETTINGS, UPSTREAMS
from gateway.providers.resilience import OPEN


async def integrations(request: web.Request, project_id: int | None) -> dict[str, Any]:
    """Each configured provider by name: whether a key is there to call it with (the
    gateway's own, or one the project stored), whether it is reachable (its circuit breaker
    is not open), and the project's stored keys (public views only, never the key)."""
    stored: list[dict[str, Any]] = []
    if project_id is not None:
        async with connection(request) as conn:
            stored = await credentials.list_credentials(conn, project_id)  # 404: no project
    breakers = request.app[PIPELINE].breakers
    out: dict[str, Any] = {}
    for name, settings in sorted(request.app[SETTINGS].providers.items()):
        own = [c for c in stored if c["provider"] == name]
        gateway_key = any(c.api_key for c in request.app[UPSTREAMS][name].credentials)
        breaker = breakers.get(name)
        state = breaker.state if breaker is not None else "closed"
        configured = gateway_key or bool(own) or settings.kind == "openai_compatible"
        out[name] = {
            "provider": name, "kind": settings.kind, "configured": configured,
            "gateway_key": gateway_key, "project_keys": own,
            "reachable": state != OPEN, "breaker": state,
            "status": ("not_configured" if not configured else
                       "unreachable" if state == OPEN else "ok"),
        }
    return out
