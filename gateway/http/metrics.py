"""`GET /metrics` (Prometheus text format 0.0.4) and the middleware counting every response.

The route is unauthenticated, like most exporters: it shows no keys, prompts, project names
or project ids, only aggregates by provider, model, status and route. Keep it off the public
network (or behind the ingress) if even those should stay private.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.keys import METRICS
from gateway.metrics import CONTENT_TYPE, Metrics

CLIENT_CLOSED = 499
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def scrape(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": CONTENT_TYPE})


def metrics_middleware(metrics: Metrics) -> Middleware:
    """Count every response by method, route template and status; put it before the error
    middleware so that rendered errors (401, 404, ...) are counted with their status."""
    counter = metrics.http

    @web.middleware
    async def count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            method = request.method if request.method in _METHODS else "other"
            counter.inc((method, route, str(status)))

    return count_responses
