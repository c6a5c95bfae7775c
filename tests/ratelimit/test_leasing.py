"""Leased rate-limit units: exact at small limits, few backend calls at large ones."""

from __future__ import annotations

import asyncio

from gateway.ratelimit import LeasingLimiter, MemoryLimiter, Window

NOW = 1_800_000_000.0  # a fixed instant, well inside a minute window


async def test_replicas_sharing_a_backend_let_exactly_the_limit_through() -> None:
    shared = MemoryLimiter()  # stands for the shared Redis / PostgreSQL counter
    replicas = [LeasingLimiter(shared) for _ in range(3)]
    windows = [Window("minute", 60, 60, 1), Window("day", 1000, 86_400, 1)]
    decisions = await asyncio.gather(*(
        replicas[i % 3].hit("project:1", windows, NOW) for i in range(150)))
    assert sum(d.allowed for d in decisions) == 60
    direct = await shared.hit("project:1", [Window("minute", 60, 60, 1)], NOW)
    assert not direct.allowed  # the shared counter is at the limit, never above


async def test_large_limits_rarely_call_the_backend() -> None:
    shared = MemoryLimiter()
    limiter = LeasingLimiter(shared)
    windows = [Window("minute", 10**9, 60, 1), Window("tokens_minute", 10**9, 60, 300)]
    for _ in range(2000):
        assert (await limiter.hit("project:2", windows, NOW)).allowed
    assert limiter.backend_calls < 60


async def test_unused_tokens_go_back_to_the_lease_locally() -> None:
    limiter = LeasingLimiter(MemoryLimiter())
    tokens = Window("tokens_minute", 1000, 60, 600)
    assert (await limiter.hit("project:3", [tokens], NOW)).allowed
    assert not (await limiter.hit("project:3", [tokens], NOW)).allowed
    calls = limiter.backend_calls
    await limiter.adjust("project:3", tokens, -500, NOW)  # the call used only 100 tokens
    assert limiter.backend_calls == calls
    assert (await limiter.hit("project:3", [tokens], NOW)).allowed


async def test_a_new_window_starts_fresh() -> None:
    limiter = LeasingLimiter(MemoryLimiter())
    window = [Window("minute", 2, 60, 1)]
    assert [(await limiter.hit("k", window, NOW)).allowed for _ in range(3)] == [
        True, True, False]
    assert (await limiter.hit("k", window, NOW + 60)).allowed


async def test_a_window_leases_only_when_it_runs_short() -> None:
    """A burst held back by its minute window must not lease the day window at every
    minute lease: those day units would lapse unused and starve the other replicas."""
    shared = MemoryLimiter()
    replicas = [LeasingLimiter(shared) for _ in range(3)]
    windows = [Window("minute", 60, 60, 1), Window("day", 1000, 86_400, 1)]
    for i in range(150):
        await replicas[i % 3].hit("project:5", windows, NOW)
    day = await shared.hit("project:5", [Window("day", 1000, 86_400, 0)], NOW)
    leased_unused = 1000 - day.windows[0].remaining - 60
    assert 0 <= leased_unused <= 3 * 1000 // 50  # at most one chunk per replica
