"""The dashboard's static files, served by the gateway itself (no other host is ever asked):
only the files in `gateway/static/`, by name, with a validator for caching."""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"


class Assets:
    """The static files, read once at start-up: name -> (body, content type, ETag)."""

    def __init__(self, directory: Path = STATIC_DIR) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for path in sorted(directory.iterdir()):
            if path.is_file():
                body = path.read_bytes()
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.files[path.name] = (body, kind, f'"{hashlib.sha256(body).hexdigest()[:16]}"')

    async def handle(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["name"])
        if found is None:
            raise NotFound("no such file")
        body, kind, etag = found
        headers = {"ETag": etag, "Cache-Control": "public, max-age=3600",
                   "X-Content-Type-Options": "nosniff"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        charset = "utf-8" if kind.startswith("text/") or kind.endswith("javascript") else None
        return web.Response(body=body, content_type=kind, charset=charset, headers=headers)


def static_handler() -> Handler:
    """`GET /dashboard/static/{name}`."""
    return Assets().handle
