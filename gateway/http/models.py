"""`GET /v1/models`: the models the calling project may use, in OpenAI's list shape."""

from __future__ import annotations

from aiohttp import web

from gateway.http.json import json_response
from gateway.keys import KEYSTORE, PIPELINE
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.authorize import model_allowed


async def list_models(request: web.Request) -> web.Response:
    principal = await authenticate(request.app[KEYSTORE], request.headers)
    project = principal.project
    pipeline = request.app[PIPELINE]
    data = [{"id": model, "object": "model", "created": 0, "owned_by": provider}
            for model, provider in pipeline.router.catalogue()
            if provider in pipeline.upstreams
            and (not project.allowed_providers or provider in project.allowed_providers)
            and model_allowed(project.allowed_models, model)]
    return json_response({"object": "list", "data": sorted(data, key=lambda m: m["id"])})
