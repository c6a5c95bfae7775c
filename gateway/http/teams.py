"""Admin API for teams (Bearer admin token): create, list, read, update, delete, and which
projects belong to a team.

A project's team decides which team budget also holds it. Membership is `projects.team_id`,
so a change fires the projects trigger and every replica drops that project's cached keys
(NOTIFY `gateway_auth`); renaming, re-budgeting or deleting a team fires the teams trigger,
which drops every cached key. Either way all replicas see the change within a second.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from gateway import checks, projects
from gateway.errors import Conflict, NotFound
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.json import int_param, json_response, read_json

TEAM_FIELDS = ("name", "monthly_budget_usd")
_TEAM_SELECT = """
    SELECT t.id, t.name, t.monthly_budget_usd, t.created_at,
           coalesce(jsonb_agg(jsonb_build_object('id', p.id, 'name', p.name) ORDER BY p.id)
                    FILTER (WHERE p.id IS NOT NULL), '[]'::jsonb) AS projects
    FROM teams t LEFT JOIN projects p ON p.team_id = t.id"""


def parse_team_fields(body: Any, *, partial: bool) -> dict[str, Any]:
    """A team body: `name` (required on create) and `monthly_budget_usd` (USD or null)."""
    body = checks.body_object(body)
    problems = checks.Problems()
    checks.unknown_fields(body, TEAM_FIELDS, problems)
    problems.raise_if_any()
    return projects.parse_project_fields(body, partial=partial)  # same rules for both fields


async def _team(conn: asyncpg.Connection, team_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(f"{_TEAM_SELECT} WHERE t.id = $1 GROUP BY t.id", team_id)
    if row is None:
        raise NotFound(f"team {team_id} does not exist")
    return dict(row)


def _duplicate(name: Any) -> Conflict:
    return Conflict(f"a team named {name!r} already exists", details={"field": "name"})


async def create_team(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    fields = parse_team_fields(await read_json(request), partial=False)
    async with connection(request) as conn:
        try:
            team_id = await conn.fetchval(
                "INSERT INTO teams (name, monthly_budget_usd) VALUES ($1, $2) RETURNING id",
                fields["name"], fields.get("monthly_budget_usd"))
        except asyncpg.UniqueViolationError:
            raise _duplicate(fields["name"]) from None
        return json_response(await _team(conn, team_id), status=201)


async def team_rows(conn: asyncpg.Connection, team_id: int | None = None
                    ) -> list[dict[str, Any]]:
    """Every team (or the one `team_id` names) with its projects, in id order."""
    rows = await conn.fetch(f"{_TEAM_SELECT} WHERE $1::bigint IS NULL OR t.id = $1 "
                            "GROUP BY t.id ORDER BY t.id", team_id)
    return [dict(row) for row in rows]


async def list_teams(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        return json_response({"teams": await team_rows(conn)})


async def get_team(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        return json_response(await _team(conn, int_param(request, "id")))


async def update_team(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    team_id = int_param(request, "id")
    fields = parse_team_fields(await read_json(request), partial=True)
    async with connection(request, writes_cached=True) as conn:
        if fields:
            names = list(fields)
            assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
            try:
                found = await conn.fetchval(
                    f"UPDATE teams SET {assignments} WHERE id = $1 RETURNING id",
                    team_id, *(fields[n] for n in names))
            except asyncpg.UniqueViolationError:
                raise _duplicate(fields.get("name")) from None
            if found is None:
                raise NotFound(f"team {team_id} does not exist")
        return json_response(await _team(conn, team_id))


async def delete_team(request: web.Request) -> web.Response:
    """Delete a team; one with projects answers 409 unless `?detach=true` (they then leave)."""
    await caller(request, allow=Access.ADMIN)
    team_id = int_param(request, "id")
    query = checks.read_query(request.query, ("detach",))
    detach = checks.choice(query, "detach", ("true", "false"), "false")
    async with connection(request, writes_cached=True) as conn, conn.transaction():
        team = await conn.fetchrow("SELECT id, name FROM teams WHERE id = $1 FOR UPDATE",
                                   team_id)
        if team is None:
            raise NotFound(f"team {team_id} does not exist")
        members = [r["id"] for r in await conn.fetch(
            "SELECT id FROM projects WHERE team_id = $1 ORDER BY id FOR UPDATE", team_id)]
        if members and detach != "true":
            raise Conflict(f"team {team_id} still has {len(members)} project(s); remove them "
                           "or pass ?detach=true", code="team_not_empty",
                           details={"projects": members})
        await conn.execute("UPDATE projects SET team_id = NULL, updated_at = now() "
                           "WHERE team_id = $1", team_id)
        await conn.execute("DELETE FROM teams WHERE id = $1", team_id)
    return json_response({"id": team_id, "name": team["name"], "deleted": True,
                          "detached_projects": members})


async def add_project(request: web.Request) -> web.Response:
    """Put a project in this team (moving it out of any other)."""
    await caller(request, allow=Access.ADMIN)
    team_id, project_id = int_param(request, "id"), int_param(request, "project_id")
    async with connection(request, writes_cached=True) as conn, conn.transaction():
        if await conn.fetchval("SELECT id FROM teams WHERE id = $1 FOR KEY SHARE",
                               team_id) is None:
            raise NotFound(f"team {team_id} does not exist")
        await projects.get_project(conn, project_id)
        await conn.execute(
            "UPDATE projects SET team_id = $1, updated_at = now() "
            "WHERE id = $2 AND team_id IS DISTINCT FROM $1", team_id, project_id)
        return json_response(projects.render_project(await projects.get_project(conn,
                                                                                project_id)))


async def remove_project(request: web.Request) -> web.Response:
    """Take a project out of this team (404 unless it is a member)."""
    await caller(request, allow=Access.ADMIN)
    team_id, project_id = int_param(request, "id"), int_param(request, "project_id")
    async with connection(request, writes_cached=True) as conn:
        left = await conn.fetchval(
            "UPDATE projects SET team_id = NULL, updated_at = now() "
            "WHERE id = $1 AND team_id = $2 RETURNING id", project_id, team_id)
        project = await projects.get_project(conn, project_id)  # 404 when missing
        if left is None:
            raise NotFound(f"project {project_id} is not in team {team_id}",
                           details={"team_id": project["team_id"]})
        return json_response(projects.render_project(project))
