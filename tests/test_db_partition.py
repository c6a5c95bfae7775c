"""PostgreSQL partitioned (black-holed) or down: known keys and credentials keep serving, no
call waits on the database, revocation is back within a second of its return, and the gateway
starts without it and becomes ready when it answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from conftest import (
    FakeUpstream,
    GatewayFactory,
    admin_headers,
    chat_body,
    create_project,
    wait_for_rows,
)

from gateway import db as gateway_db
from gateway.keys import CREDENTIALS, KEYSTORE
from gateway.testing.tcp_proxy import TcpProxy

SECRET = "correct horse battery staple, 32+ characters long"
PROJECT_KEY = "sk-project-own-key-0000abcd"
NEVER_SEEN = "gw_zzzzzzzzzz_never-issued-never-seen"
MAX_WAIT_S = 1.0  # no call may wait longer than this for the database
REFRESH_TIMEOUT_S = 0.3


async def _gateway(make_gateway: GatewayFactory, dsn: str, **database: Any) -> TestClient:
    return await make_gateway(
        database={"url": dsn, "connect_timeout_s": 0.5, **database},
        auth={"refresh_timeout_s": REFRESH_TIMEOUT_S}, secrets={"key": SECRET})


async def _call(client: TestClient, key: str) -> tuple[int, float, dict[str, Any]]:
    """(status, seconds, body) of one chat call."""
    started = time.perf_counter()
    resp = await client.post("/v1/chat/completions", json=chat_body(),
                             headers={"Authorization": f"Bearer {key}"})
    body = await resp.json()
    return resp.status, time.perf_counter() - started, body


async def _until(predicate: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until `await predicate()` is true (polled every 20 ms), failing after `within`."""
    started = time.perf_counter()
    while time.perf_counter() - started < within:
        if await predicate():
            return time.perf_counter() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {within} s")


async def test_a_partition_serves_known_keys_and_credentials_without_waiting(
        make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str],
        db: asyncpg.Connection, fake_upstream: FakeUpstream) -> None:
    proxy, dsn = pg_proxy
    gateway = await _gateway(make_gateway, dsn)
    keystore, credentials = gateway.app[KEYSTORE], gateway.app[CREDENTIALS]

    async def listening() -> bool:
        return keystore.listening and credentials.listening

    await _until(listening, within=5)
    project, key = await create_project(gateway, plan="enterprise")  # no rate limit
    resp = await gateway.put(f"/api/admin/projects/{project['id']}/providers/openai",
                             headers=admin_headers(), json={"api_key": PROJECT_KEY})
    assert resp.status == 200, await resp.text()
    _, doomed = await create_project(gateway)
    for known in (key, doomed):  # both cached now, with their credentials
        assert (await _call(gateway, known))[0] == 200

    await proxy.black_hole()
    # Revoked behind the partition's back: this process cannot hear it until it is over.
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE prefix = $1",
                     doomed.split("_")[1])
    results: list[tuple[int, float, dict[str, Any]]] = []
    partitioned = time.perf_counter()
    lost_at: list[float] = []

    async def client() -> None:
        # Until both listeners have noticed (a ping goes unanswered: 5 to 10 s) and then
        # 2.5 s more: entries expire a second after that and are served stale while every
        # read of them times out.
        while time.perf_counter() - partitioned < 14:
            if not lost_at and not keystore.listening and not credentials.listening:
                lost_at.append(time.perf_counter())
            if lost_at and time.perf_counter() - lost_at[0] > 2.5:
                return
            results.append(await _call(gateway, key))
            await asyncio.sleep(0.05)

    await asyncio.gather(*(client() for _ in range(4)))
    assert lost_at, "the listeners never noticed the partition"
    statuses = {status for status, _, _ in results}
    slowest = max(seconds for _, seconds, _ in results)
    assert statuses == {200} and slowest < MAX_WAIT_S, (statuses, slowest, len(results))
    assert len(results) > 100
    assert fake_upstream.state.log[-1]["headers"]["Authorization"] == f"Bearer {PROJECT_KEY}"

    status, seconds, body = await _call(gateway, NEVER_SEEN)  # nothing to serve: a quick 503
    assert (status, body["error"]["code"]) == (503, "auth_unavailable") and seconds < MAX_WAIT_S
    assert (await _call(gateway, doomed))[0] == 200  # stale, within its bound

    await proxy.restore()

    async def refused() -> bool:
        return (await _call(gateway, doomed))[0] == 401

    assert await _until(refused, within=1.5) < 1.2
    status, seconds, _ = await _call(gateway, key)
    assert status == 200 and seconds < MAX_WAIT_S
    status, _, body = await _call(gateway, NEVER_SEEN)  # read now, and not found
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


@pytest.mark.parametrize("fault", ["cut", "black_hole"])
async def test_the_gateway_starts_without_the_database_and_becomes_ready_when_it_answers(
        fault: str, make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str],
        db: asyncpg.Connection) -> None:
    proxy, dsn = pg_proxy
    await getattr(proxy, fault)()
    started = time.perf_counter()
    gateway = await _gateway(make_gateway, dsn, migrate_on_start=True)
    assert time.perf_counter() - started < 5

    resp = await gateway.get("/api/health/ready")
    assert resp.status == 503
    data = await resp.json()
    assert data["checks"]["database"]["ok"] is False and data["checks"]["database"]["error"]
    assert (await gateway.get("/api/health/live")).status == 200
    for _ in range(3):  # the first read times out; the next ones do not even try
        status, seconds, body = await _call(gateway, NEVER_SEEN)
        assert (status, body["error"]["code"]) == (503, "auth_unavailable")
        assert seconds < MAX_WAIT_S

    await proxy.restore()

    async def ready() -> bool:
        return (await gateway.get("/api/health/ready")).status == 200

    await _until(ready, within=10)
    _, key = await create_project(gateway)
    status, _, body = await _call(gateway, key)
    assert status == 200, body
    assert len(await wait_for_rows(gateway, 1)) == 1


BOUND_S = 0.5


async def _in_transaction(conn: asyncpg.Connection, proxy: TcpProxy) -> None:
    async with conn.transaction():
        await conn.execute("SELECT 1")
        await proxy.black_hole()
        await conn.execute("SELECT 2")


async def _at_commit(conn: asyncpg.Connection, proxy: TcpProxy) -> None:
    async with conn.transaction():
        await conn.execute("SELECT 1")
        await proxy.black_hole()


async def _copying(conn: asyncpg.Connection, proxy: TcpProxy) -> None:
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (n int)")
    async with conn.transaction():
        await proxy.black_hole()
        await conn.copy_records_to_table("t", records=[(n,) for n in range(100)])


async def _plain(conn: asyncpg.Connection, proxy: TcpProxy) -> None:
    await proxy.black_hole()
    await conn.fetchval("SELECT 1")


@pytest.mark.parametrize("where", [_plain, _in_transaction, _at_commit, _copying],
                         ids=["query", "in-transaction", "commit", "copy"])
async def test_a_bounded_connection_ends_within_its_bound_behind_a_partition(
        pg_proxy: tuple[TcpProxy, str],
        where: Callable[[asyncpg.Connection, TcpProxy], Awaitable[None]]) -> None:
    """Wherever the partition catches it, even inside a transaction block (whose exit awaits
    a ROLLBACK a partition never answers), the caller is free within the bound: TimeoutError,
    the connection given up, the pool still usable once PostgreSQL answers again."""
    proxy, dsn = pg_proxy
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, command_timeout=30)
    try:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with gateway_db.bounded_connection(pool, BOUND_S) as conn:
                await where(conn, proxy)
        waited = time.perf_counter() - started
        assert waited < BOUND_S + 0.3, f"waited {waited:.2f} s on a {BOUND_S} s bound"
        await proxy.restore()
        async with gateway_db.bounded_connection(pool, 5.0) as conn:
            assert await conn.fetchval("SELECT 41 + 1") == 42
    finally:
        pool.terminate()


class SlowReleasePool:
    """A pool whose release takes a while (as behind a slow network), to cancel during it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.releasing = asyncio.Event()

    async def acquire(self) -> asyncpg.Connection:
        return await self.pool.acquire()

    async def release(self, conn: asyncpg.Connection) -> None:
        self.releasing.set()
        await asyncio.sleep(5)
        await self.pool.release(conn)


async def test_a_cancellation_while_releasing_is_not_swallowed(database_url: str) -> None:
    """A task cancelled while its connection goes back to the pool stays cancelled (the
    connection is given up): a swallowed cancellation lets a stopped task carry on."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    slow = SlowReleasePool(pool)
    after: list[str] = []

    async def user() -> None:
        async with gateway_db.bounded_connection(slow, 10.0) as conn:  # type: ignore[arg-type]
            await conn.fetchval("SELECT 1")
        after.append("carried on")

    task = asyncio.create_task(user())
    await asyncio.wait_for(slow.releasing.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert after == []
    pool.terminate()
