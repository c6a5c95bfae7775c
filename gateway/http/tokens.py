"""`POST /api/tokens/count`: the token calculator (project key or admin token)."""

from __future__ import annotations

from aiohttp import web

from gateway.http.access import Access, caller
from gateway.http.json import json_response, read_limited
from gateway.keys import PRICES, SETTINGS, TOKENS
from gateway.pipeline.validate import parse_json_object
from gateway.tokens.calculator import count_request


async def count_tokens(request: web.Request) -> web.Response:
    await caller(request, allow=Access.PROJECT_OR_ADMIN)
    limit = request.app[SETTINGS].server.max_body_bytes
    body = parse_json_object(await read_limited(request, limit), limit)
    return json_response(await count_request(body, request.app[TOKENS], request.app[PRICES]))
