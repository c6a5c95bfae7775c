"""Key revocation reaches every replica within a second (LISTEN/NOTIFY, and without it), and
the replica that took an admin's write at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from conftest import GatewayFactory, admin_headers, chat_body, create_project

from gateway.dbcache import DbCache, Freshness, caught_up
from gateway.keys import CREDENTIALS, KEYSTORE
from gateway.listener import NotifyListener


async def _status(client: TestClient, key: str) -> int:
    resp = await client.post("/v1/chat/completions", json=chat_body(),
                             headers={"Authorization": f"Bearer {key}"})
    return resp.status


async def _wait_listening(*clients: TestClient) -> None:
    for _ in range(100):
        if all(c.app[KEYSTORE].listening for c in clients):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("key store listener did not connect")


async def _stop_listening(client: TestClient, db: asyncpg.Connection) -> None:
    """Kill the database's LISTEN connections (they come back by themselves)."""
    await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE query LIKE 'LISTEN%' AND datname = current_database()")
    for _ in range(100):
        if not client.app[KEYSTORE].listening:
            break
        await asyncio.sleep(0.01)


async def _until_listening(cache: Any) -> None:
    for _ in range(250):  # bounded: a listener that never connects fails the caller's asserts
        if cache.listening:
            return
        await asyncio.sleep(0.02)


async def _first_status_change(client: TestClient, key: str, expected: int,
                               within: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < within:
        if await _status(client, key) == expected:
            return loop.time() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"status did not become {expected} within {within}s")


async def test_revocation_on_one_replica_reaches_another_within_a_second(
        make_gateway: GatewayFactory) -> None:
    a, b = await make_gateway(), await make_gateway()
    await _wait_listening(a, b)
    project, key = await create_project(a)
    assert await _status(b, key) == 200  # now cached on b
    keys = await (await a.get(f"/api/admin/projects/{project['id']}/keys",
                              headers=admin_headers())).json()
    await a.delete(f"/api/admin/keys/{keys['keys'][0]['id']}", headers=admin_headers())
    assert await _first_status_change(b, key, 401, within=1.0) < 1.0


async def test_revocation_by_sql_reaches_the_cache(gateway: TestClient,
                                                   db: asyncpg.Connection) -> None:
    await _wait_listening(gateway)
    _, key = await create_project(gateway)
    assert await _status(gateway, key) == 200
    await db.execute("UPDATE api_keys SET revoked_at = now()")
    assert await _first_status_change(gateway, key, 401, within=1.0) < 1.0


async def test_revocation_while_the_listener_is_down_still_lands_within_a_second(
        gateway: TestClient, db: asyncpg.Connection) -> None:
    await _wait_listening(gateway)
    _, key = await create_project(gateway)
    # Kill the listening connection and revoke in the same transaction-free breath: the
    # notification is lost, so only the short unlistened TTL can save us.
    await _stop_listening(gateway, db)
    assert await _status(gateway, key) == 200  # cached while not listening: short TTL
    await db.execute("UPDATE api_keys SET revoked_at = now()")
    assert await _first_status_change(gateway, key, 401, within=1.2) <= 1.2
    await _wait_listening(gateway)  # and the listener comes back by itself


async def test_many_concurrent_first_requests_all_authenticate(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    statuses = await asyncio.gather(*(_status(gateway, key) for _ in range(20)))
    assert statuses == [200] * 20


# Read your own writes: the replica that took an admin's write answers by it at once, however
# slowly its listener hears the NOTIFY (here every notification is handled 0.3 s late).

def _hear_late(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.3) -> None:
    heard = NotifyListener._notified

    def late(self: NotifyListener, *args: Any) -> None:
        asyncio.get_running_loop().call_later(delay_s, heard, self, *args)
    monkeypatch.setattr(NotifyListener, "_notified", late)


async def test_a_revocation_holds_at_once_on_the_replica_that_took_it(
        make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    _hear_late(monkeypatch)
    client = await make_gateway()
    await _wait_listening(client)
    project, key = await create_project(client)
    assert await _status(client, key) == 200  # cached
    keys = await (await client.get(f"/api/admin/projects/{project['id']}/keys",
                                   headers=admin_headers())).json()
    resp = await client.delete(f"/api/admin/keys/{keys['keys'][0]['id']}",
                               headers=admin_headers())
    assert resp.status == 200
    assert await _status(client, key) == 401


async def test_a_stored_provider_key_is_used_at_once_by_the_replica_that_took_it(
        make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    _hear_late(monkeypatch)
    client = await make_gateway(
        secrets={"key": "k" * 40},
        providers={"anthropic": {"base_url": "https://api.anthropic.com", "api_key": ""}})
    await _wait_listening(client)
    await _until_listening(client.app[CREDENTIALS])
    project, key = await create_project(client)
    auth = {"Authorization": f"Bearer {key}"}

    async def owners() -> set[str]:
        models = await (await client.get("/v1/models", headers=auth)).json()
        return {m["owned_by"] for m in models["data"]}
    assert "anthropic" not in await owners()  # the project's credentials are now cached
    path = f"/api/admin/projects/{project['id']}/providers/anthropic"
    resp = await client.put(path, headers=admin_headers(), json={"api_key": "sk-ant-own"})
    assert resp.status == 200, await resp.text()
    assert "anthropic" in await owners()
    resp = await client.delete(path, headers=admin_headers())
    assert resp.status == 204
    assert "anthropic" not in await owners()


async def test_a_write_while_not_listening_still_holds_at_once(
        gateway: TestClient, db: asyncpg.Connection) -> None:
    await _wait_listening(gateway)
    project, key = await create_project(gateway)
    await _stop_listening(gateway, db)
    assert await _status(gateway, key) == 200  # cached for a second: nothing would tell us
    resp = await gateway.patch(f"/api/admin/projects/{project['id']}",
                               headers=admin_headers(), json={"enabled": False})
    assert resp.status == 200, await resp.text()
    assert await _status(gateway, key) != 200


async def _listening_cache(pool: asyncpg.Pool, dsn: str,
                           read: Callable[[asyncpg.Connection, str], Awaitable[str]]
                           ) -> DbCache[str, str]:
    """A cache of `read`, listening (a listener's return would have every entry read again)."""
    cache: DbCache[str, str] = DbCache(read, name="test", freshness=Freshness(60.0),
                                       unavailable=RuntimeError, max_entries=10)
    cache.start(pool, dsn, "test_dbcache_channel", on_notify=lambda _: None,
                connect_timeout_s=5.0)
    await _until_listening(cache)
    assert cache.listening
    return cache


async def test_a_read_in_flight_when_an_invalidation_arrives_is_not_joined(
        database_url: str) -> None:
    """A request after the invalidation reads anew instead of waiting for the older read."""
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=2)
    version, seen, started, gate = ["old"], [], asyncio.Event(), asyncio.Event()

    async def read(_conn: asyncpg.Connection, _key: str) -> str:
        value = version[0]
        seen.append(value)
        if len(seen) == 1:
            started.set()
            await gate.wait()  # the first read saw the database before the change
        return value
    cache = await _listening_cache(pool, database_url, read)
    try:
        first = asyncio.create_task(cache.get("k"))
        await asyncio.wait_for(started.wait(), 5.0)
        version[0] = "new"
        cache.drop("k")
        assert await asyncio.wait_for(cache.get("k"), 2.0) == "new"
        gate.set()
        assert await first == "old"  # its own caller asked before the change
        assert await cache.get("k") == "new"  # and the older answer was not kept
        assert seen == ["old", "new"]
    finally:
        gate.set()
        await cache.close()
        await pool.close()


async def test_catching_up_without_the_database_rereads_everything_and_does_not_raise(
        database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    reads: list[str] = []

    async def read(_conn: asyncpg.Connection, key: str) -> str:
        reads.append(key)
        return key
    cache = await _listening_cache(pool, database_url, read)
    try:
        assert await cache.get("k") == "k" and await cache.get("k") == "k"
        assert reads == ["k"]  # cached
        await caught_up(pool, [cache])  # a mark that comes back: nothing reread
        assert await cache.get("k") == "k" and reads == ["k"]
        gone = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
        await gone.close()
        await caught_up(gone, [cache], wait_s=0.5)  # the mark cannot be sent: no raise
        assert await cache.get("k") == "k" and reads == ["k", "k"]  # so it was read again
    finally:
        await cache.close()
        await pool.close()
