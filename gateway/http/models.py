"""`GET /v1/models`: the models the calling project may use, in OpenAI's list shape."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import GatewayError
from gateway.http.access import Access, caller
from gateway.http.json import json_response
from gateway.keys import PIPELINE
from gateway.pipeline.authorize import model_allowed
from gateway.pipeline.runner import ProxyPipeline


async def list_models(request: web.Request) -> web.Response:
    """Models of providers the project can reach (the gateway's key or its own stored one)
    and may use (allow-lists)."""
    project = (await caller(request, allow=Access.PROJECT)).key.project
    pipeline = request.app[PIPELINE]
    reachable = set()
    for name, upstream in pipeline.upstreams.items():
        if project.allowed_providers and name not in project.allowed_providers:
            continue
        if upstream.usable or await _own_credentials(pipeline, project.id, name):
            reachable.add(name)
    data = [{"id": model, "object": "model", "created": 0, "owned_by": provider}
            for model, provider in pipeline.router.catalogue()
            if provider in reachable and model_allowed(project.allowed_models, model)]
    return json_response({"object": "list", "data": sorted(data, key=lambda m: m["id"])})


async def _own_credentials(pipeline: ProxyPipeline, project_id: int, provider: str) -> bool:
    if pipeline.credentials is None:
        return False
    try:
        return bool(await pipeline.credentials.get(project_id, provider))
    except GatewayError:  # stored but unreadable: not reachable now
        return False
