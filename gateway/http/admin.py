"""Admin API (Bearer `GATEWAY_ADMIN_TOKEN`): projects, keys and budgets."""

from __future__ import annotations

import hmac
from decimal import Decimal

from aiohttp import web

from gateway import projects
from gateway.errors import BadRequest, Forbidden, Unauthorized
from gateway.http.json import int_param, json_response, read_json
from gateway.keys import POOL, SETTINGS


def is_admin(request: web.Request) -> bool:
    """Whether the request carries the admin token (compared in constant time)."""
    token = request.app[SETTINGS].auth.admin_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


def require_admin(request: web.Request) -> None:
    if not request.app[SETTINGS].auth.admin_token:
        raise Forbidden("the admin API is disabled: set GATEWAY_ADMIN_TOKEN to enable it",
                        code="admin_disabled")
    if not is_admin(request):
        raise Unauthorized("admin token required: send 'Authorization: Bearer <admin token>'",
                           code="invalid_admin_token")


async def create_project(request: web.Request) -> web.Response:
    require_admin(request)
    fields = projects.parse_project_fields(await read_json(request), partial=False)
    async with request.app[POOL].acquire() as conn:
        row = await projects.create_project(conn, fields)
    return json_response(projects.render_project(row), status=201)


async def list_projects(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        rows = await projects.list_projects(conn)
    return json_response({"projects": [projects.render_project(r) for r in rows]})


async def get_project(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        row = await projects.get_project(conn, int_param(request, "id"))
    return json_response(projects.render_project(row))


async def update_project(request: web.Request) -> web.Response:
    require_admin(request)
    fields = projects.parse_project_fields(await read_json(request), partial=True)
    async with request.app[POOL].acquire() as conn:
        row = await projects.update_project(conn, int_param(request, "id"), fields)
    return json_response(projects.render_project(row))


async def _budget_body(request: web.Request) -> Decimal | None:
    """The body of a budget PUT: exactly `{"monthly_budget_usd": <USD or null>}`."""
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"monthly_budget_usd"}:
        raise BadRequest("body must be {\"monthly_budget_usd\": <USD or null>}")
    amount: Decimal | None = projects.parse_project_fields(
        body, partial=True)["monthly_budget_usd"]
    return amount


async def set_budget(request: web.Request) -> web.Response:
    require_admin(request)
    fields = {"monthly_budget_usd": await _budget_body(request)}
    async with request.app[POOL].acquire() as conn:
        row = await projects.update_project(conn, int_param(request, "id"), fields)
    return json_response(projects.render_project(row))


async def issue_key(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json(request, required=False)
    name = body.get("name", "") if isinstance(body, dict) else None
    if not isinstance(name, str) or len(name) > 200:
        raise BadRequest("name must be a string of at most 200 characters")
    async with request.app[POOL].acquire() as conn:
        row, key = await projects.issue_key(conn, int_param(request, "id"), name)
    return json_response({**dict(row), "key": key}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        rows = await projects.list_keys(conn, int_param(request, "id"))
    return json_response({"keys": [dict(r) for r in rows]})


async def revoke_key(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        row = await projects.revoke_key(conn, int_param(request, "id"))
    return json_response(dict(row))


async def set_team_budget(request: web.Request) -> web.Response:
    require_admin(request)
    amount = await _budget_body(request)
    async with request.app[POOL].acquire() as conn:
        row = await projects.set_team_budget(conn, int_param(request, "id"), amount)
    return json_response(dict(row))
