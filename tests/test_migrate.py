"""Migrations: once each, in order, safe when many replicas start together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from conftest import ROOT, with_database

from gateway import migrate


@pytest.fixture
async def empty_db(pg_server_dsn: str) -> AsyncIterator[str]:
    name = f"gw_migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_many_replicas_migrating_at_once_apply_each_file_once(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate.migrate(c, ROOT / "migrations") for c in conns))
        files = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
        assert sorted(name for applied in results for name in applied) == files
        rows = await conns[0].fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
        assert [r["name"] for r in rows] == files
        assert await migrate.migrate(conns[0], ROOT / "migrations") == []
        tables = {r["tablename"] for r in await conns[0].fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"teams", "projects", "api_keys", "usage_records"} <= tables
    finally:
        for c in conns:
            await c.close()


async def test_a_failing_migration_rolls_back_and_is_not_recorded(
        empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT * FROM missing;")
    conn = await asyncpg.connect(empty_db)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate.migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
        assert await conn.fetchval("SELECT to_regclass('b')") is None
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int);")
        assert await migrate.migrate(conn, tmp_path) == ["0002_bad.sql"]
    finally:
        await conn.close()


async def test_an_edited_applied_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int);")
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate.migrate(conn, tmp_path)
        (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x bigint);")
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            await migrate.migrate(conn, tmp_path)
    finally:
        await conn.close()


@pytest.mark.parametrize("names", [["1_short.sql"], ["0001_a.sql", "0001_b.sql"]])
def test_bad_migration_file_names_are_refused(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError):
        migrate.discover(tmp_path)
