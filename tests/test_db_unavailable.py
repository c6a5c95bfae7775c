"""PostgreSQL refusing or black-holed: admin and analytics calls answer a quick 503
`database_unavailable` (never a 500, never a hang) and answer normally once it is back; the
webhook worker, `DatabaseStart` and the app's database teardown end within a bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from conftest import GatewayFactory, admin_headers, create_project

from gateway import db as gateway_db
from gateway import migrate
from gateway.keys import POOL
from gateway.settings import DatabaseSettings, WebhookSettings
from gateway.testing.tcp_proxy import TcpProxy
from gateway.webhooks import WebhookWorker

QUERY_TIMEOUT_S = 1.0
MAX_ANSWER_S = QUERY_TIMEOUT_S + 1.0  # the bound on any admin or analytics answer
FAULTS = ["cut", "black_hole"]


async def _gateway(make_gateway: GatewayFactory, dsn: str, **sections: Any) -> TestClient:
    return await make_gateway(
        database={"url": dsn, "connect_timeout_s": 0.5, "query_timeout_s": QUERY_TIMEOUT_S},
        auth={"refresh_timeout_s": 0.3}, **sections)


def _routes(project_id: int, new_project: str
            ) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Admin and analytics calls that read or write PostgreSQL directly."""
    p = project_id
    return [
        ("GET", "/api/admin/projects", None),
        ("GET", f"/api/admin/projects/{p}", None),
        ("POST", "/api/admin/projects", {"name": new_project}),
        ("PATCH", f"/api/admin/projects/{p}", {"plan": "pro"}),
        ("GET", f"/api/admin/projects/{p}/keys", None),
        ("GET", "/api/admin/teams", None),
        ("GET", f"/api/admin/projects/{p}/providers", None),
        ("GET", "/api/admin/webhooks", None),
        ("GET", f"/api/admin/projects/{p}/alerts", None),
        ("GET", "/api/analytics/usage", None),
        ("GET", "/api/analytics/timeseries", None),
        ("GET", "/api/analytics/burn-rate", None),
        ("GET", "/api/costs?group_by=project", None),
        ("GET", f"/api/costs/forecast?project_id={p}", None),
        ("GET", "/api/teams/usage", None),
        ("GET", f"/api/budgets/status?project_id={p}", None),
        ("POST", "/api/track", {"project_id": p, "provider": "openai",
                                "model": "gpt-4o-mini", "input_tokens": 1,
                                "output_tokens": 1}),
    ]


async def _answer(client: TestClient, method: str, path: str,
                  body: dict[str, Any] | None) -> tuple[int, float, dict[str, Any], str]:
    """(status, seconds, JSON body, Retry-After) of one admin call."""
    started = time.perf_counter()
    resp = await client.request(method, path, json=body, headers=admin_headers())
    data = await resp.json()
    return resp.status, time.perf_counter() - started, data, resp.headers.get(
        "Retry-After", "")


@pytest.mark.parametrize("fault", FAULTS)
async def test_admin_and_analytics_answer_503_quickly_then_recover(
        fault: str, make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str],
        db: asyncpg.Connection) -> None:
    proxy, dsn = pg_proxy
    gateway = await _gateway(make_gateway, dsn)
    project, _ = await create_project(gateway)
    for method, path, body in _routes(project["id"], "made-before"):  # healthy
        status, _, data, _ = await _answer(gateway, method, path, body)
        assert status < 500, (path, data)
    routes = _routes(project["id"], "made-during-the-fault")

    await getattr(proxy, fault)()
    for method, path, body in routes:
        status, seconds, data, retry_after = await _answer(gateway, method, path, body)
        assert (status, data["code"]) == (503, "database_unavailable"), (path, data)
        assert data["error"] == "the database is unavailable; retry shortly"
        assert retry_after.isdigit(), (path, retry_after)
        assert seconds < MAX_ANSWER_S, (path, seconds)

    await proxy.restore()
    deadline = time.perf_counter() + 5
    while (await _answer(gateway, "GET", "/api/admin/projects", None))[0] != 200:
        assert time.perf_counter() < deadline, "not back within 5 s of the restore"
        await asyncio.sleep(0.05)
    for method, path, body in routes:
        status, seconds, data, _ = await _answer(gateway, method, path, body)
        assert status in (200, 201), (path, data)
        assert seconds < MAX_ANSWER_S, (path, seconds)
    assert await db.fetchval("SELECT count(*) FROM projects WHERE name = $1",
                             "made-during-the-fault") == 1  # once: after the restore


async def test_concurrent_calls_during_a_black_hole_all_end_within_the_bound(
        make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str],
        db: asyncpg.Connection) -> None:
    """More calls than the pool has connections: those waiting for a connection give up
    within the same bound, and the pool is usable again after the restore."""
    proxy, dsn = pg_proxy
    gateway = await _gateway(make_gateway, dsn)
    await create_project(gateway)
    await proxy.black_hole()
    started = time.perf_counter()
    answers = await asyncio.gather(*(_answer(gateway, "GET", "/api/analytics/usage", None)
                                     for _ in range(12)))
    assert {(a[0], a[2]["code"]) for a in answers} == {(503, "database_unavailable")}
    assert time.perf_counter() - started < MAX_ANSWER_S
    await proxy.restore()
    deadline = time.perf_counter() + 5
    while (await _answer(gateway, "GET", "/api/analytics/usage", None))[0] != 200:
        assert time.perf_counter() < deadline, "not back within 5 s of the restore"
        await asyncio.sleep(0.05)


async def test_the_app_database_teardown_ends_within_a_bound_in_a_black_hole(
        make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str],
        db: asyncpg.Connection) -> None:
    proxy, dsn = pg_proxy
    gateway = await _gateway(make_gateway, dsn, server={"shutdown_timeout_s": 1.0},
                             webhooks={"poll_interval_s": 0.05, "timeout_s": 1.0})
    await create_project(gateway)
    pool = gateway.app[POOL]
    idle = [await pool.acquire() for _ in range(4)]  # idle connections, to be black-holed
    for conn in idle:
        await pool.release(conn)
    await proxy.black_hole()
    status, _, _, _ = await _answer(gateway, "GET", "/api/admin/projects", None)
    assert status == 503
    started = time.perf_counter()
    await asyncio.wait_for(gateway.close(), 30)
    took = time.perf_counter() - started
    # The ledger's drain (shutdown_timeout_s), the webhook worker and the pool: each bounded.
    assert took < 1.0 + 2 * QUERY_TIMEOUT_S + 3.0, took
    assert pool.is_closing()


async def test_close_pool_terminates_connections_it_cannot_close(
        pg_proxy: tuple[TcpProxy, str], db: asyncpg.Connection) -> None:
    proxy, dsn = pg_proxy
    settings = DatabaseSettings(url=dsn, connect_timeout_s=0.5)
    pool = await gateway_db.create_pool(dsn, settings)
    conns = [await pool.acquire() for _ in range(3)]
    for conn in conns:
        await pool.release(conn)
    await proxy.black_hole()
    started = time.perf_counter()
    await gateway_db.close_pool(pool, 0.5)
    assert time.perf_counter() - started < 1.5
    assert pool.is_closing()
    assert all(conn._con is None for conn in conns)  # handed back, then closed or terminated


async def test_the_webhook_worker_closes_within_a_bound_in_a_black_hole(
        pg_proxy: tuple[TcpProxy, str], db: asyncpg.Connection) -> None:
    proxy, dsn = pg_proxy
    pool = await gateway_db.create_pool(dsn, DatabaseSettings(url=dsn, connect_timeout_s=0.5))
    worker = WebhookWorker(pool, WebhookSettings(poll_interval_s=0.02, timeout_s=1.0), None,
                           db_timeout_s=0.5)
    try:
        await worker.start()
        assert await worker.pending() == 0
        await proxy.black_hole()
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await worker.pending()  # a metrics scrape: bounded as well
        assert time.perf_counter() - started < 1.0
        await asyncio.sleep(0.3)  # the worker is now stuck in a claim, or between polls
        started = time.perf_counter()
        await worker.close()
        assert time.perf_counter() - started < 1.0
    finally:
        pool.terminate()


async def test_database_start_stops_promptly_while_its_attempt_waits(
        pg_proxy: tuple[TcpProxy, str], db: asyncpg.Connection) -> None:
    proxy, dsn = pg_proxy
    await proxy.black_hole()
    settings = DatabaseSettings(url=dsn, connect_timeout_s=0.3, migrate_on_start=True)
    pool = await gateway_db.create_pool(dsn, settings)
    start = gateway_db.DatabaseStart(pool, dsn, settings)
    try:
        await start.start()  # times out once, then retries in the background
        assert not start.ready.is_set() and start.error.startswith("TimeoutError")
        await asyncio.sleep(0.5)  # a retry is waiting on the black hole now
        started = time.perf_counter()
        await start.close()
        assert time.perf_counter() - started < 0.5
    finally:
        pool.terminate()


async def test_a_migration_that_does_not_finish_in_time_ends_the_attempt_not_the_retries(
        database_url: str, db: asyncpg.Connection) -> None:
    """Held up past `migrate_timeout_s` (here by another migrator's lock, as by a partition
    mid-migration), the attempt fails and the next one, unhindered, succeeds."""
    settings = DatabaseSettings(url=database_url, connect_timeout_s=2.0, migrate_on_start=True,
                                migrate_timeout_s=0.3, pool_min_size=1)
    pool = await gateway_db.create_pool(database_url, settings)
    start = gateway_db.DatabaseStart(pool, database_url, settings)
    await db.execute("SELECT pg_advisory_lock($1)", migrate.LOCK_ID)
    try:
        started = time.perf_counter()
        await start.start()
        assert time.perf_counter() - started < 2.0
        assert not start.ready.is_set() and start.error.startswith("TimeoutError")
        await db.execute("SELECT pg_advisory_unlock($1)", migrate.LOCK_ID)
        await asyncio.wait_for(start.ready.wait(), 5)
        assert start.attempts >= 2
    finally:
        await start.close()
        await gateway_db.close_pool(pool, 1.0)
