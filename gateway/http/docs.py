"""`GET /api/openapi.json`: the interface description kept in `docs/openapi.json`."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import NotFound
from gateway.settings import PROJECT_ROOT

OPENAPI_PATH = PROJECT_ROOT / "docs" / "openapi.json"


def openapi_handler(path: Path = OPENAPI_PATH) -> Handler:
    body = path.read_bytes() if path.exists() else None

    async def openapi(request: web.Request) -> web.Response:
        if body is None:
            raise NotFound(f"{path} is not installed with this gateway")
        return web.Response(body=body, content_type="application/json")

    return openapi
