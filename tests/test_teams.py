"""Teams admin API on real PostgreSQL: CRUD, membership, and every replica's key cache."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from conftest import SettingsFactory, admin_headers, create_project
from test_analytics import wired_app

from gateway.keys import KEYSTORE

ADMIN = admin_headers()


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: SettingsFactory,
                 db: asyncpg.Connection) -> TestClient:
    result: TestClient = await aiohttp_client(wired_app(make_settings()))
    return result


async def call(client: TestClient, method: str, path: str, status: int = 200,
               body: Any = None, headers: dict[str, str] | None = None) -> Any:
    resp = await client.request(method, path, json=body,
                                headers=ADMIN if headers is None else headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_team_lifecycle(client: TestClient, db: asyncpg.Connection) -> None:
    team = await call(client, "POST", "/api/admin/teams", 201,
                      {"name": "Engineering", "monthly_budget_usd": "300.10"})
    assert team["name"] == "Engineering" and team["monthly_budget_usd"] == 300.1
    assert team["projects"] == [] and isinstance(team["id"], int)
    assert await db.fetchval("SELECT monthly_budget_usd FROM teams") == Decimal("300.10")
    dup = await call(client, "POST", "/api/admin/teams", 409, {"name": "Engineering"})
    assert dup["details"]["field"] == "name"
    other = await call(client, "POST", "/api/admin/teams", 201, {"name": "Marketing"})
    listed = await call(client, "GET", "/api/admin/teams")
    assert [t["name"] for t in listed["teams"]] == ["Engineering", "Marketing"]
    renamed = await call(client, "PATCH", f"/api/admin/teams/{team['id']}", 200,
                         {"name": "Platform", "monthly_budget_usd": None})
    assert (renamed["name"], renamed["monthly_budget_usd"]) == ("Platform", None)
    await call(client, "PATCH", f"/api/admin/teams/{team['id']}", 409, {"name": "Marketing"})
    assert (await call(client, "GET", f"/api/admin/teams/{team['id']}"))["name"] == "Platform"
    deleted = await call(client, "DELETE", f"/api/admin/teams/{other['id']}")
    assert deleted == {"id": other["id"], "name": "Marketing", "deleted": True,
                       "detached_projects": []}
    await call(client, "GET", f"/api/admin/teams/{other['id']}", 404)
    await call(client, "PATCH", f"/api/admin/teams/{other['id']}", 404, {"name": "x"})
    await call(client, "DELETE", f"/api/admin/teams/{other['id']}", 404)


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/api/admin/teams", {}, "name"),
    ("POST", "/api/admin/teams", {"name": ""}, "name"),
    ("POST", "/api/admin/teams", {"name": "t", "plan": "pro"}, "plan"),
    ("POST", "/api/admin/teams", {"name": "t", "monthly_budget_usd": -1}, "monthly_budget_usd"),
    ("PATCH", "/api/admin/teams/1", {"monthly_budget_usd": "lots"}, "monthly_budget_usd"),
    ("DELETE", "/api/admin/teams/1?detach=maybe", None, "detach"),
])
async def test_rejects_bad_bodies(client: TestClient, method: str, path: str, body: Any,
                                  field: str) -> None:
    await call(client, "POST", "/api/admin/teams", 201, {"name": "first"})
    answer = await call(client, method, path, 400, body)
    assert answer["details"]["field"] == field


async def test_admin_token_is_required(client: TestClient) -> None:
    _, key = await create_project(client)
    for method, path in (("GET", "/api/admin/teams"), ("POST", "/api/admin/teams"),
                         ("GET", "/api/admin/teams/1"), ("PATCH", "/api/admin/teams/1"),
                         ("DELETE", "/api/admin/teams/1"),
                         ("PUT", "/api/admin/teams/1/projects/1"),
                         ("DELETE", "/api/admin/teams/1/projects/1")):
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            answer = await call(client, method, path, 401, {"name": "x"}, headers)
            assert answer["code"] == "invalid_admin_token"


async def test_membership(client: TestClient) -> None:
    project, _ = await create_project(client, team="old")
    new = await call(client, "POST", "/api/admin/teams", 201, {"name": "new"})
    moved = await call(client, "PUT", f"/api/admin/teams/{new['id']}/projects/{project['id']}")
    assert (moved["team"], moved["team_id"]) == ("new", new["id"])
    again = await call(client, "PUT", f"/api/admin/teams/{new['id']}/projects/{project['id']}")
    assert again["team_id"] == new["id"]  # idempotent
    team = await call(client, "GET", f"/api/admin/teams/{new['id']}")
    assert team["projects"] == [{"id": project["id"], "name": project["name"]}]
    assert (await call(client, "GET", f"/api/admin/projects/{project['id']}"))["team"] == "new"
    old = next(t for t in (await call(client, "GET", "/api/admin/teams"))["teams"]
               if t["name"] == "old")
    assert old["projects"] == []
    not_member = await call(client, "DELETE",
                            f"/api/admin/teams/{old['id']}/projects/{project['id']}", 404)
    assert not_member["details"]["team_id"] == new["id"]
    left = await call(client, "DELETE", f"/api/admin/teams/{new['id']}/projects/{project['id']}")
    assert left["team"] is None and left["team_id"] is None
    await call(client, "PUT", f"/api/admin/teams/999999/projects/{project['id']}", 404)
    await call(client, "PUT", f"/api/admin/teams/{new['id']}/projects/999999", 404)
    await call(client, "DELETE", f"/api/admin/teams/{new['id']}/projects/999999", 404)


async def test_deleting_a_team_with_projects(client: TestClient) -> None:
    a, _ = await create_project(client, team="squad")
    b, _ = await create_project(client, team="squad")
    team_id = a["team_id"]
    refused = await call(client, "DELETE", f"/api/admin/teams/{team_id}", 409)
    assert refused["code"] == "team_not_empty"
    assert refused["details"]["projects"] == [a["id"], b["id"]]
    done = await call(client, "DELETE", f"/api/admin/teams/{team_id}?detach=true")
    assert done["detached_projects"] == [a["id"], b["id"]]
    assert (await call(client, "GET", f"/api/admin/projects/{a['id']}"))["team_id"] is None


async def _team_seen(client: TestClient, key: str, team_id: int | None) -> bool:
    """Whether the key cache answers the project with this team, within 5 seconds."""
    keystore = client.app[KEYSTORE]
    for _ in range(250):
        if (await keystore.authenticate(key)).project.team_id == team_id:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_membership_reaches_the_key_cache(client: TestClient) -> None:
    project, key = await create_project(client)
    keystore = client.app[KEYSTORE]
    for _ in range(250):  # the listener is up, so cached entries are trusted for their TTL
        if keystore.listening:
            break
        await asyncio.sleep(0.02)
    assert keystore.listening
    assert (await keystore.authenticate(key)).project.team_id is None  # cached now
    team = await call(client, "POST", "/api/admin/teams", 201,
                      {"name": "budgeted", "monthly_budget_usd": 5})
    await call(client, "PUT", f"/api/admin/teams/{team['id']}/projects/{project['id']}")
    assert await _team_seen(client, key, team["id"])
    assert (await keystore.authenticate(key)).project.team_budget_usd == 5
    await call(client, "PATCH", f"/api/admin/teams/{team['id']}", 200,
               {"monthly_budget_usd": 7})
    for _ in range(250):
        if (await keystore.authenticate(key)).project.team_budget_usd == 7:
            break
        await asyncio.sleep(0.02)
    assert (await keystore.authenticate(key)).project.team_budget_usd == 7
    await call(client, "DELETE", f"/api/admin/teams/{team['id']}/projects/{project['id']}")
    assert await _team_seen(client, key, None)
