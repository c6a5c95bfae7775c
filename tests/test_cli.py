"""The admin CLI against real PostgreSQL: migrate, projects and keys."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import orjson
from conftest import ROOT


async def gateway(database_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=ROOT,
        env={**os.environ, "GATEWAY_DATABASE_URL": database_url,
             "GATEWAY_LOGGING_LEVEL": "warning"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_projects_and_keys(database_url: str, db: asyncpg.Connection) -> None:
    code, out, err = await gateway(database_url, "migrate")
    assert code == 0, err
    assert "applied 0 migration(s)" in out

    code, out, err = await gateway(
        database_url, "projects", "create", "--name", "cli", "--team", "ops", "--plan", "pro",
        "--budget", "12.5", "--provider", "openai", "--model", "gpt-4o-mini",
        "--requests-per-minute", "30",
        "--metadata", '{"cost_center": "42"}')
    assert code == 0, err
    project = orjson.loads(out)
    assert (project["name"], project["team"], project["plan"]) == ("cli", "ops", "pro")
    assert project["allowed_models"] == ["gpt-4o-mini"]
    assert project["metadata"] == {"cost_center": "42"}
    assert (project["requests_per_minute"], project["requests_per_day"]) == (30, None)

    code, out, err = await gateway(database_url, "keys", "issue", str(project["id"]),
                                   "--name", "ci")
    assert code == 0, err
    issued = orjson.loads(out)
    assert issued["key"].startswith("gw_") and "not shown again" in err

    code, out, _ = await gateway(database_url, "keys", "list", "--project", str(project["id"]))
    assert [orjson.loads(line)["prefix"] for line in out.splitlines()] == [issued["prefix"]]
    assert issued["key"] not in out

    code, out, _ = await gateway(database_url, "keys", "revoke", str(issued["id"]))
    assert code == 0 and orjson.loads(out)["revoked_at"] is not None
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys") is True

    code, out, _ = await gateway(database_url, "projects", "update", str(project["id"]),
                                 "--plan", "team")
    assert code == 0 and orjson.loads(out)["plan"] == "team"
    code, out, _ = await gateway(database_url, "projects", "disable", str(project["id"]))
    assert code == 0 and orjson.loads(out)["enabled"] is False
    code, out, _ = await gateway(database_url, "projects", "list")
    assert [orjson.loads(line)["name"] for line in out.splitlines()] == ["cli"]


async def test_cli_errors_are_clear(database_url: str, db: asyncpg.Connection) -> None:
    code, _, err = await gateway(database_url, "projects", "create", "--name", "x",
                                 "--budget", "-3")
    assert code == 1 and "monthly_budget_usd" in err
    code, _, err = await gateway(database_url, "keys", "revoke", "424242")
    assert code == 1 and "does not exist" in err
    code, _, err = await gateway(database_url, "projects", "create", "--name", "x",
                                 "--metadata", "{oops")
    assert code == 1 and "--metadata" in err
