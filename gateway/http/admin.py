"""Admin API (Bearer `GATEWAY_ADMIN_TOKEN`): projects, keys and budgets."""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from gateway import checks, projects
from gateway.errors import BadRequest
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.json import int_param, json_response, read_json


async def create_project(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    fields = projects.parse_project_fields(await read_json(request), partial=False)
    async with connection(request) as conn:
        row = await projects.create_project(conn, fields)
    return json_response(projects.render_project(row), status=201)


async def list_projects(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        rows = await projects.list_projects(conn)
    return json_response({"projects": [projects.render_project(r) for r in rows]})


async def get_project(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        row = await projects.get_project(conn, int_param(request, "id"))
    return json_response(projects.render_project(row))


async def update_project(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    fields = projects.parse_project_fields(await read_json(request), partial=True)
    async with connection(request, writes_cached=True) as conn:
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
    await caller(request, allow=Access.ADMIN)
    fields = {"monthly_budget_usd": await _budget_body(request)}
    async with connection(request, writes_cached=True) as conn:
        row = await projects.update_project(conn, int_param(request, "id"), fields)
    return json_response(projects.render_project(row))


async def issue_key(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    body = checks.body_object(await read_json(request, required=False))
    problems = checks.Problems()
    name = checks.text(body.get("name", ""), "name", problems, max_chars=200, min_chars=0)
    problems.raise_if_any()
    async with connection(request) as conn:
        row, key = await projects.issue_key(conn, int_param(request, "id"), name or "")
    return json_response({**dict(row), "key": key}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        rows = await projects.list_keys(conn, int_param(request, "id"))
    return json_response({"keys": [dict(r) for r in rows]})


async def revoke_key(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request, writes_cached=True) as conn:
        row = await projects.revoke_key(conn, int_param(request, "id"))
    return json_response(dict(row))


async def set_team_budget(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    amount = await _budget_body(request)
    async with connection(request, writes_cached=True) as conn:
        row = await projects.set_team_budget(conn, int_param(request, "id"), amount)
    return json_response(dict(row))
