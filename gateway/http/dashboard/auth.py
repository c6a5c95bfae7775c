"""Who is looking at the dashboard: every page and form asks `viewer` or `form_viewer`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.analytics import Scope
from gateway.errors import Forbidden
from gateway.http.dashboard.session import COOKIE, Session, check_csrf, to_login
from gateway.http.database import connection
from gateway.keys import DASHBOARD


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in person: the admin (sees and manages all) or one project (read-only)."""

    session: Session
    project_name: str | None = None

    @property
    def admin(self) -> bool:
        return self.session.admin

    @property
    def scope(self) -> Scope:
        """What analytics this viewer may see: everything, or its own project."""
        return Scope(project_id=self.session.project_id)

    def may_see(self, project_id: int | None) -> bool:
        return self.admin or project_id == self.session.project_id


async def _viewer(request: web.Request) -> Viewer | None:
    session = request.app[DASHBOARD].session(request.cookies.get(COOKIE))
    if session is None:
        return None
    if session.admin:
        return Viewer(session)
    async with connection(request) as conn:  # a revoked key ends its sessions at once
        row = await conn.fetchrow(
            """SELECT p.name FROM api_keys k JOIN projects p ON p.id = k.project_id
               WHERE k.id = $1 AND k.project_id = $2 AND k.revoked_at IS NULL""",
            session.key_id, session.project_id)
    return None if row is None else Viewer(session, row["name"])


async def viewer(request: web.Request, *, admin: bool = False) -> Viewer:
    """The signed-in viewer of a page; to the sign-in page without one, 403 for a project
    session on an admin page."""
    who = await _viewer(request)
    if who is None:
        raise to_login(request)
    if admin and not who.admin:
        raise Forbidden("this page needs the admin sign-in; a project key sees its own project",
                        code="admin_required")
    return who


async def form_viewer(request: web.Request, *, manage: bool = True) -> tuple[Viewer, Any]:
    """Who posts a form, and the form: 403 without a session, without the session's CSRF
    token, or (`manage`: a change) from a project session, which is read-only."""
    form = await request.post()
    who = await _viewer(request)
    if who is None:
        raise Forbidden("sign in to the dashboard first", code="not_signed_in")
    token = form.get("csrf")
    check_csrf(who.session, token if isinstance(token, str) else "")
    if manage and not who.admin:
        raise Forbidden("a project sign-in is read-only", code="admin_required")
    return who, form
