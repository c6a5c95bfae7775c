"""Claim stores when their store is gone, expiry sweeps, bounds, and the factory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.errors import ServiceUnavailable
from gateway.idempotency import (
    Claim,
    MemoryClaims,
    PostgresClaims,
    RedisClaims,
    ResilientClaims,
    UpstashClaims,
    create_claims,
)
from gateway.settings import RateLimitSettings, SettingsError, settings_from_mapping


@pytest.fixture
async def dead_redis() -> AsyncIterator[RedisClaims]:
    store = RedisClaims.from_url("redis://127.0.0.1:1/0", timeout_s=0.2)
    yield store
    await store.close()


async def test_fail_closed_answers_503(dead_redis: RedisClaims) -> None:
    store = ResilientClaims(dead_redis, "fail_closed")
    with pytest.raises(ServiceUnavailable) as caught:
        await store.claim(1, "req", "gw-a", 60)
    assert caught.value.status == 503
    assert caught.value.code == "idempotency_unavailable"
    assert "redis" in caught.value.message


async def test_fail_open_claims_in_memory(dead_redis: RedisClaims) -> None:
    store = ResilientClaims(dead_redis, "fail_open")
    assert await store.claim(1, "req", "gw-a", 60) == Claim(True, "gw-a")
    assert await store.claim(1, "req", "gw-b", 60) == Claim(False, "gw-a")
    assert store.fallbacks == 2


async def test_upstash_wrong_token_fails_closed(upstash: tuple[str, str]) -> None:
    store = ResilientClaims(UpstashClaims.from_url(upstash[0], "wrong", timeout_s=1.0),
                            "fail_closed")
    with pytest.raises(ServiceUnavailable, match="upstash"):
        await store.claim(1, "req", "gw-a", 60)
    await store.close()


async def test_postgres_sweeper_deletes_expired_claims(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    await pool.execute("TRUNCATE idempotency_keys")
    store = PostgresClaims(pool, timeout_s=1.0)
    try:
        await store.claim(1, "short", "gw-a", 0.01)
        await store.claim(1, "long", "gw-b", 60)
        await asyncio.sleep(0.05)
        assert await store.sweeper.sweep() == 1
        rows = await pool.fetch("SELECT client_request_id FROM idempotency_keys")
        assert [r["client_request_id"] for r in rows] == ["long"]
    finally:
        await store.close()
        await pool.execute("TRUNCATE idempotency_keys")
        await pool.close()


async def test_memory_claims_stay_bounded() -> None:
    clock = [0.0]
    store = MemoryClaims(max_entries=3, clock=lambda: clock[0])
    for i in range(5):
        clock[0] = float(i)
        assert (await store.claim(1, f"req-{i}", f"gw-{i}", 60)).claimed
    assert len(store) == 3  # the two closest to expiry were dropped
    assert (await store.claim(1, "req-0", "gw-x", 60)).claimed
    assert not (await store.claim(1, "req-4", "gw-y", 60)).claimed
    clock[0] = 1_000.0
    await store.claim(1, "req-late", "gw-z", 60)
    assert len(store) == 1  # every earlier claim expired


def _settings(**values: str) -> RateLimitSettings:
    return settings_from_mapping({"ratelimit": values}, {}).ratelimit


async def test_create_claims_builds_the_configured_backend(redis_url: str) -> None:
    assert isinstance(create_claims(_settings(backend="memory"), pool=None), MemoryClaims)
    store = create_claims(_settings(backend="redis", redis_url=redis_url,
                                    failure_policy="fail_open"), pool=None)
    assert isinstance(store, ResilientClaims)
    assert (await store.claim(1, f"factory-{uuid.uuid4()}", "gw-a", 1.0)).claimed
    assert store.fallbacks == 0
    await store.close()
    with pytest.raises(SettingsError, match="upstash_url"):
        create_claims(_settings(backend="upstash"), pool=None)
