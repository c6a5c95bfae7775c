"""Failure policies: unreachable, slow and misconfigured stores, and the factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import structlog
from aiohttp import web

from gateway.errors import ServiceUnavailable
from gateway.ratelimit import (
    BackendAuthError,
    BackendUnavailable,
    LeasingLimiter,
    MemoryLimiter,
    PostgresLimiter,
    RedisLimiter,
    ResilientLimiter,
    UpstashLimiter,
    Window,
    create_limiter,
)
from gateway.settings import RateLimitSettings, SettingsError, settings_from_mapping

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
MINUTE = Window("minute", 2, 60, 1)


@pytest.fixture
async def dead_redis() -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter.from_url(CLOSED_PORT_URL, timeout_s=0.2)
    yield limiter
    await limiter.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """An HTTP server that accepts requests and never answers (until the test ends)."""
    done = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(done.wait(), timeout=10)
        except TimeoutError:
            pass
        return web.json_response({"result": None})

    app = web.Application()
    app.router.add_post("/{tail:.*}", hang)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    done.set()
    await runner.cleanup()


async def test_unreachable_redis_is_backend_unavailable(dead_redis: RedisLimiter) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        await dead_redis.hit("k", [MINUTE])
    assert caught.value.backend == "redis"


async def test_fail_closed_answers_503(dead_redis: RedisLimiter) -> None:
    limiter = ResilientLimiter(dead_redis, "fail_closed")
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        await limiter.hit("k", [MINUTE])
    assert time.monotonic() - started < 1.0
    assert caught.value.status == 503
    assert caught.value.code == "ratelimit_unavailable"
    assert "redis" in caught.value.message
    assert limiter.fallbacks == 0
    with pytest.raises(ServiceUnavailable):
        await limiter.adjust("k", MINUTE, -1)


async def test_fail_open_falls_back_to_memory(dead_redis: RedisLimiter) -> None:
    limiter = ResilientLimiter(dead_redis, "fail_open")
    assert limiter.name == "redis"
    with structlog.testing.capture_logs() as logs:
        decisions = [await limiter.hit("k", [MINUTE]) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]  # memory still limits
    assert {d.backend for d in decisions} == {"memory"}
    assert limiter.fallbacks == 3
    warnings = [e for e in logs if e["event"] == "store_unavailable"]
    assert len(warnings) == 1  # throttled: one warning for a burst of failures
    assert warnings[0]["backend"] == "redis" and warnings[0]["log_level"] == "warning"
    await limiter.adjust("k", MINUTE, -2)  # given back to the memory fallback
    assert (await limiter.hit("k", [MINUTE])).allowed
    assert limiter.fallbacks == 5


async def test_healthy_primary_decides(redis_url: str) -> None:
    primary = RedisLimiter.from_url(redis_url, timeout_s=1.0, prefix="rl-resilient-ok")
    limiter = ResilientLimiter(primary, "fail_open")
    decision = await limiter.hit(f"k-{time.time_ns()}", [MINUTE])
    await limiter.close()
    assert decision.backend == "redis" and limiter.fallbacks == 0


async def test_unreachable_postgres_is_backend_unavailable() -> None:
    pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/test", min_size=0,
                                     max_size=1, timeout=0.2)
    assert pool is not None
    limiter = ResilientLimiter(PostgresLimiter(pool, timeout_s=0.5), "fail_closed")
    try:
        with pytest.raises(ServiceUnavailable, match="postgres"):
            await limiter.hit("k", [MINUTE])
    finally:
        await limiter.close()
        await pool.close()


async def test_upstash_wrong_token_is_an_auth_error(upstash: tuple[str, str]) -> None:
    url, _token = upstash
    limiter = UpstashLimiter.from_url(url, "not-the-token", timeout_s=1.0)
    try:
        with pytest.raises(BackendAuthError, match="refused the token"):
            await limiter.hit("k", [MINUTE])
        with pytest.raises(ServiceUnavailable, match="upstash"):
            await ResilientLimiter(limiter, "fail_closed").hit("k", [MINUTE])
    finally:
        await limiter.close()


async def test_upstash_timeout_is_enforced(silent_server: str) -> None:
    limiter = UpstashLimiter.from_url(silent_server, "token", timeout_s=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable, match=r"no answer within 0\.2 s"):
            await limiter.hit("k", [MINUTE])
    finally:
        await limiter.close()
    assert time.monotonic() - started < 1.0  # not the client's 3 s retry, not forever


async def test_upstash_unreachable_falls_back() -> None:
    limiter = ResilientLimiter(UpstashLimiter.from_url("http://127.0.0.1:1", "t", timeout_s=0.5),
                               "fail_open")
    decision = await limiter.hit("k", [MINUTE])
    await limiter.close()
    assert decision.allowed and decision.backend == "memory" and limiter.fallbacks == 1


def _settings(**ratelimit: str) -> RateLimitSettings:
    return settings_from_mapping({"ratelimit": ratelimit}, {}).ratelimit


async def test_create_limiter_builds_the_configured_backend(redis_url: str) -> None:
    memory = create_limiter(_settings(backend="memory"), pool=None)
    assert isinstance(memory, MemoryLimiter)
    redis = create_limiter(_settings(backend="redis", redis_url=redis_url,
                                     failure_policy="fail_open"), pool=None)
    assert isinstance(redis, LeasingLimiter) and redis.name == "redis"
    assert (await redis.hit(f"factory-{time.time_ns()}", [MINUTE])).backend == "redis"
    await redis.close()


def test_upstash_needs_url_and_token() -> None:
    with pytest.raises(SettingsError, match=r"upstash_url and ratelimit\.upstash_token"):
        create_limiter(_settings(backend="upstash"), pool=None)
    with pytest.raises(SettingsError, match="upstash_token"):
        create_limiter(_settings(backend="upstash", upstash_url="http://x"),
                       pool=None)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="fail_closed"):
        ResilientLimiter(MemoryLimiter(), "fail_sometimes")
