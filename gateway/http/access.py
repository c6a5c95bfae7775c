"""Who may call what: the one decision every handler asks for (admin token, project key, or
either), and which project a call may be about.

The proxy entries authenticate inside the pipeline (stage 1, `pipeline/authenticate.py`);
everything else calls `caller`. `tests/test_access_matrix.py` holds every route to its level.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from aiohttp import web

from gateway.domain import Principal
from gateway.errors import BadRequest, Forbidden, Unauthorized
from gateway.http.quota import admit
from gateway.keys import KEYSTORE, SETTINGS
from gateway.pipeline.authenticate import authenticate


class Access(enum.Enum):
    ADMIN = "admin"  # the admin token only
    PROJECT = "project"  # a project key only
    PROJECT_OR_ADMIN = "project_or_admin"  # a key sees its own project; the admin token, all


@dataclass(frozen=True, slots=True)
class Caller:
    """The admin token (`principal` None) or a project key."""

    principal: Principal | None = None

    @property
    def admin(self) -> bool:
        return self.principal is None

    @property
    def key(self) -> Principal:
        """The project key that called (always there for `Access.PROJECT`)."""
        if self.principal is None:
            raise Forbidden("this needs a project key, not the admin token",
                            code="project_key_required")
        return self.principal

    @property
    def key_id(self) -> int | None:
        return None if self.principal is None else self.principal.key_id

    def project_id(self, asked: object = None, *, denied: str = "sees only that project") -> int:
        """The project the call is about: a key's own (403 when `asked` names another one), or
        the one the admin token names (400 when it names none)."""
        project_id = self.project_filter(asked, denied=denied)
        if project_id is None:
            raise BadRequest("project_id is required with the admin token",
                             details={"field": "project_id"})
        return project_id

    def project_filter(self, asked: object = None, *,
                       denied: str = "sees only that project") -> int | None:
        """Like `project_id`, but the admin token may name none (None: every project)."""
        if self.principal is None:
            if isinstance(asked, bool) or not isinstance(asked, int | None):
                raise BadRequest("project_id must be a project id",
                                 details={"field": "project_id", "value": asked})
            return asked
        own = self.principal.project.id
        if asked is not None and (isinstance(asked, bool) or asked != own):
            raise Forbidden(f"this key belongs to project {own} and {denied}",
                            details={"field": "project_id", "value": asked})
        return own


def _is_admin_token(request: web.Request) -> bool:
    """Whether the request carries the admin token (compared in constant time)."""
    token = request.app[SETTINGS].auth.admin_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


async def caller(request: web.Request, *, allow: Access) -> Caller:
    """Who is calling, if `allow` admits them: 401 for a missing, wrong or revoked credential,
    403 for the admin API while no admin token is configured. Errors never echo the key.
    A project key calling an API route is counted against its plan (`http/quota.py`)."""
    if allow is not Access.PROJECT and _is_admin_token(request):
        return Caller()
    if allow is Access.ADMIN:
        if not request.app[SETTINGS].auth.admin_token:
            raise Forbidden("the admin API is disabled: set GATEWAY_ADMIN_TOKEN to enable it",
                            code="admin_disabled")
        raise Unauthorized("admin token required: send 'Authorization: Bearer <admin token>'",
                           code="invalid_admin_token")
    principal = await authenticate(request.app[KEYSTORE], request.headers)
    if allow is Access.PROJECT_OR_ADMIN:  # the API routes: held to the project's plan
        await admit(request, principal)
    return Caller(principal)
