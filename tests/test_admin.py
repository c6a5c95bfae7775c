"""Admin API on real PostgreSQL: projects, keys (shown once, stored hashed), budgets."""

from __future__ import annotations

import hashlib

import asyncpg
from aiohttp.test_utils import TestClient
from conftest import GatewayFactory, admin_headers, chat_body

ADMIN = admin_headers()


async def test_project_lifecycle(gateway: TestClient) -> None:
    body = {"name": "search", "team": "growth", "plan": "pro", "monthly_budget_usd": 250.5,
            "allowed_providers": ["openai"], "allowed_models": ["gpt-4o-mini", "gpt-4o*"],
            "enabled": True, "metadata": {"owner": "ana"}}
    resp = await gateway.post("/api/admin/projects", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert isinstance(created["id"], int)
    for key, value in body.items():
        if key == "allowed_models":
            assert sorted(created[key]) == sorted(value)
        else:
            assert created[key] == value, key

    resp = await gateway.patch(f"/api/admin/projects/{created['id']}",
                               json={"plan": "team", "enabled": False}, headers=ADMIN)
    assert resp.status == 200
    updated = await resp.json()
    assert (updated["plan"], updated["enabled"], updated["team"]) == ("team", False, "growth")

    resp = await gateway.put(f"/api/admin/projects/{created['id']}/budget",
                             json={"monthly_budget_usd": "99.99"}, headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["monthly_budget_usd"] == 99.99

    listed = await (await gateway.get("/api/admin/projects", headers=ADMIN)).json()
    assert [p["name"] for p in listed["projects"]] == ["search"]
    one = await (await gateway.get(f"/api/admin/projects/{created['id']}", headers=ADMIN)).json()
    assert one["plan"] == "team"


async def test_budget_is_stored_exactly(gateway: TestClient, db: asyncpg.Connection) -> None:
    resp = await gateway.post("/api/admin/projects", headers=ADMIN,
                              json={"name": "exact", "monthly_budget_usd": "0.1"})
    assert resp.status == 201
    assert str(await db.fetchval("SELECT monthly_budget_usd FROM projects")) == "0.1"


async def test_key_is_shown_once_and_only_its_hash_is_stored(
        gateway: TestClient, db: asyncpg.Connection) -> None:
    project = await (await gateway.post("/api/admin/projects", json={"name": "k"},
                                        headers=ADMIN)).json()
    resp = await gateway.post(f"/api/admin/projects/{project['id']}/keys",
                              json={"name": "ci"}, headers=ADMIN)
    assert resp.status == 201
    issued = await resp.json()
    key = issued["key"]
    assert key.startswith(f"gw_{issued['prefix']}_") and len(key) > 40
    row = await db.fetchrow("SELECT * FROM api_keys")
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert key not in str(dict(row)) and key.split("_", 2)[2] not in str(dict(row))
    listed = await (await gateway.get(f"/api/admin/projects/{project['id']}/keys",
                                      headers=ADMIN)).json()
    assert listed["keys"][0]["prefix"] == issued["prefix"]
    assert "key" not in listed["keys"][0]
    resp = await gateway.delete(f"/api/admin/keys/{issued['id']}", headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["revoked_at"] is not None


async def test_admin_needs_the_admin_token(gateway: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-admin-token"}):
        resp = await gateway.get("/api/admin/projects", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["code"] == "invalid_admin_token"


async def test_admin_api_is_off_without_a_token(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(auth={"admin_token": ""})
    resp = await client.get("/api/admin/projects", headers={"Authorization": "Bearer "})
    assert resp.status == 403
    assert "GATEWAY_ADMIN_TOKEN" in (await resp.json())["error"]


async def test_admin_input_errors(gateway: TestClient) -> None:
    cases = [
        ({"team": "x"}, 400, "name"),
        ({"name": "a", "plan": "gold"}, 400, "plan"),
        ({"name": "a", "monthly_budget_usd": -1}, 400, "monthly_budget_usd"),
        ({"name": "a", "monthly_budget_usd": "lots"}, 400, "monthly_budget_usd"),
        ({"name": "a", "allowed_models": "gpt-4o"}, 400, "allowed_models"),
        ({"name": "a", "enabled": "yes"}, 400, "enabled"),
        ({"name": "a", "colour": "red"}, 400, "colour"),
    ]
    for body, status, needle in cases:
        resp = await gateway.post("/api/admin/projects", json=body, headers=ADMIN)
        assert resp.status == status, body
        assert needle in (await resp.json())["error"], body
    assert (await gateway.post("/api/admin/projects", json={"name": "dup"},
                               headers=ADMIN)).status == 201
    resp = await gateway.post("/api/admin/projects", json={"name": "dup"}, headers=ADMIN)
    assert resp.status == 409
    assert (await gateway.patch("/api/admin/projects/999", json={"plan": "pro"},
                                headers=ADMIN)).status == 404
    assert (await gateway.post("/api/admin/projects/999/keys", headers=ADMIN)).status == 404
    assert (await gateway.delete("/api/admin/keys/999", headers=ADMIN)).status == 404
    resp = await gateway.put("/api/admin/projects/1/budget", json={"limit": 5}, headers=ADMIN)
    assert resp.status == 400


async def test_disabling_a_project_takes_effect_at_once(gateway: TestClient) -> None:
    project = await (await gateway.post("/api/admin/projects", json={"name": "p"},
                                        headers=ADMIN)).json()
    key = (await (await gateway.post(f"/api/admin/projects/{project['id']}/keys",
                                     headers=ADMIN)).json())["key"]
    auth = {"Authorization": f"Bearer {key}"}
    assert (await gateway.post("/v1/chat/completions", json=chat_body(),
                               headers=auth)).status == 200
    await gateway.patch(f"/api/admin/projects/{project['id']}", json={"enabled": False},
                        headers=ADMIN)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth)
    assert resp.status == 403
