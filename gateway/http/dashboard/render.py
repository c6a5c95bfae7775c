"""One way to answer with a dashboard page: the template, the viewer, strict headers."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from gateway.http.dashboard.auth import Viewer
from gateway.keys import SETTINGS

# Nothing from another host, no inline script or style: what the offline promise means.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; object-src 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "X-Frame-Options": "DENY"}


def page(request: web.Request, template: str, who: Viewer | None, *, status: int = 200,
         **context: Any) -> web.Response:
    """Render `dashboard/<template>` (autoescaped) for `who`."""
    context.update(who=who, csrf=who.session.csrf if who else "",
                   refresh_ms=int(request.app[SETTINGS].dashboard.refresh_s * 1000),
                   path=request.path)
    response = aiohttp_jinja2.render_template(f"dashboard/{template}", request, context,
                                              status=status)
    response.headers.update(HEADERS)
    return response
