"""What each backend does beyond the contract: key layout, script reloads, expiry."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio

from gateway.ratelimit import MemoryLimiter, PostgresLimiter, RedisLimiter, UpstashLimiter, Window
from gateway.ratelimit.scripted import ScriptedLimiter
from gateway.ratelimit.sweeper import ExpirySweeper

MINUTE = Window("minute", 5, 60, 1)
T0 = 1_699_920_010.0


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert created is not None
    yield created
    await created.close()


async def test_redis_keys_and_ttls(redis_url: str, redis_client: redis.asyncio.Redis) -> None:
    prefix = f"rl-layout-{uuid.uuid4().hex[:8]}"
    limiter = RedisLimiter.from_url(redis_url, timeout_s=1.0, prefix=prefix)
    await limiter.hit("project:7", [MINUTE, Window("day", 10, 86_400, 1)], now=T0)
    await limiter.close()
    start = int(T0 - 10)
    minute_key = f"{prefix}:{{project:7}}:minute:{start}"
    day_key = f"{prefix}:{{project:7}}:day:{start}"
    assert await redis_client.get(minute_key) == b"1"
    assert 60 < await redis_client.ttl(minute_key) <= 65
    assert 86_400 < await redis_client.ttl(day_key) <= 86_405
    await redis_client.delete(minute_key, day_key)


@pytest.mark.parametrize("backend", ["redis", "upstash"])
async def test_scripts_reload_after_a_flush(backend: str, redis_url: str,
                                            upstash: tuple[str, str],
                                            redis_client: redis.asyncio.Redis) -> None:
    prefix = f"rl-flush-{uuid.uuid4().hex[:8]}"
    limiter: ScriptedLimiter = (
        RedisLimiter.from_url(redis_url, timeout_s=1.0, prefix=prefix) if backend == "redis"
        else UpstashLimiter.from_url(*upstash, timeout_s=1.0, prefix=prefix))
    try:
        assert (await limiter.hit("k", [MINUTE], now=T0)).windows[0].remaining == 4
        await redis_client.script_flush()  # as after a Redis restart: EVALSHA gets NOSCRIPT
        assert (await limiter.hit("k", [MINUTE], now=T0)).windows[0].remaining == 3
        await redis_client.script_flush()
        await limiter.adjust("k", MINUTE, -2, now=T0)
        assert (await limiter.hit("k", [MINUTE], now=T0)).windows[0].remaining == 4
    finally:
        await limiter.close()
        await redis_client.delete(f"{prefix}:{{k}}:minute:{int(T0 - 10)}")


async def test_memory_forgets_finished_windows() -> None:
    clock = [0.0]
    limiter = MemoryLimiter(monotonic=lambda: clock[0])
    for i in range(100):
        await limiter.hit(f"k{i}", [MINUTE], now=T0)
    assert len(limiter) == 100
    clock[0] = 30.0
    await limiter.hit("late", [MINUTE], now=T0)
    assert len(limiter) == 101  # the window is not over yet
    clock[0] = 62.0
    await limiter.hit("latest", [MINUTE], now=T0)
    assert len(limiter) == 2  # only "late" and "latest" are left


async def test_postgres_sweeper_deletes_only_expired_rows(pool: asyncpg.Pool) -> None:
    prefix = f"rl-sweep-{uuid.uuid4().hex[:8]}"
    limiter = PostgresLimiter(pool, timeout_s=1.0, prefix=prefix)
    await limiter.hit("live", [MINUTE], now=T0)
    await pool.execute(
        "INSERT INTO ratelimit_counters (key, window_start, used, expires_at) "
        "SELECT $1 || ':old:minute', g, 1, now() - interval '1 second' "
        "FROM generate_series(1, 5) AS g", prefix)
    sweeper = ExpirySweeper(pool, "ratelimit_counters", "key, window_start", batch=3)
    assert await sweeper.sweep() == 3  # bounded batches
    assert await sweeper.sweep() == 2
    keys = await pool.fetch("SELECT key FROM ratelimit_counters WHERE key LIKE $1", f"{prefix}:%")
    assert [r["key"] for r in keys] == [f"{prefix}:live:minute"]
    await limiter.close()
    await pool.execute("DELETE FROM ratelimit_counters WHERE key LIKE $1", f"{prefix}:%")


async def test_postgres_sweeps_in_the_background(pool: asyncpg.Pool) -> None:
    prefix = f"rl-bg-{uuid.uuid4().hex[:8]}"
    await pool.execute(
        "INSERT INTO ratelimit_counters (key, window_start, used, expires_at) "
        "VALUES ($1, 0, 1, now() - interval '1 second')", f"{prefix}:gone:minute")
    limiter = PostgresLimiter(pool, timeout_s=1.0, prefix=prefix, sweep_interval_s=0.0)
    await limiter.hit("live", [MINUTE], now=T0)  # due at once: starts one sweep task
    deadline = time.monotonic() + 2
    while await pool.fetchval("SELECT count(*) FROM ratelimit_counters WHERE key = $1",
                              f"{prefix}:gone:minute"):
        assert time.monotonic() < deadline, "the background sweep never ran"
        await asyncio.sleep(0.01)
    await limiter.close()
    await pool.execute("DELETE FROM ratelimit_counters WHERE key LIKE $1", f"{prefix}:%")
