"""Leased rate-limit units: exact at small limits, few backend calls at large ones."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

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


async def test_settling_against_a_lease_gives_back_at_most_what_was_leased() -> None:
    limiter = LeasingLimiter(MemoryLimiter())
    tokens = Window("tokens_minute", 10_000, 60, 300)
    assert (await limiter.hit("k", [tokens], NOW)).allowed  # leased 300, all of it used
    assert limiter.room("k", tokens, NOW) == 0
    await limiter.adjust("k", tokens, -1000, NOW)  # "gives back" more than the call took
    assert limiter.room("k", tokens, NOW) == 300  # no more than was leased
    await limiter.adjust("k", tokens, 700, NOW)  # a call that used far more than it said
    assert limiter.room("k", tokens, NOW) == 0  # 400 owed, not -400
    await limiter.adjust("k", tokens, -300, NOW)
    assert limiter.room("k", tokens, NOW) == 0  # what is owed comes first: 100 still
    await limiter.adjust("k", tokens, -200, NOW)
    assert limiter.room("k", tokens, NOW) == 100
    calls = limiter.backend_calls
    await limiter.adjust("k", tokens, -50, NOW + 60)  # a window gone: nothing to settle
    assert limiter.backend_calls == calls and limiter.room("k", tokens, NOW) == 100


async def test_a_new_window_starts_fresh() -> None:
    limiter = LeasingLimiter(MemoryLimiter())
    window = [Window("minute", 2, 60, 1)]
    assert [(await limiter.hit("k", window, NOW)).allowed for _ in range(3)] == [
        True, True, False]
    assert (await limiter.hit("k", window, NOW + 60)).allowed


class SlowBackend:
    """A shared counter one network round trip away, so concurrent hits interleave."""

    def __init__(self) -> None:
        self.counter = MemoryLimiter()
        self.name = "slow"
        self.calls = 0

    async def hit(self, key: str, windows: Sequence[Window], now: float | None = None) -> Any:
        self.calls += 1
        await asyncio.sleep(0.001)
        return await self.counter.hit(key, windows, now)

    async def adjust(self, key: str, window: Window, delta: int, now: float | None = None
                     ) -> None:
        await self.counter.adjust(key, window, delta, now)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("concurrent", [False, True])
async def test_a_window_leases_only_when_it_runs_short(concurrent: bool) -> None:
    """A burst held back by its minute window must not lease the day window at every
    minute lease, nor at every one of many concurrent requests: those day units would lapse
    unused and starve the other replicas (the day's quota spent for nothing)."""
    shared = SlowBackend()
    replicas = [LeasingLimiter(shared) for _ in range(3)]  # type: ignore[arg-type]
    windows = [Window("minute", 60, 60, 1), Window("day", 1000, 86_400, 1)]
    hits = [replicas[i % 3].hit("project:5", windows, NOW) for i in range(150)]
    if concurrent:
        decisions = await asyncio.gather(*hits)
    else:
        decisions = [await hit for hit in hits]
    assert sum(d.allowed for d in decisions) == 60
    day = await shared.counter.hit("project:5", [Window("day", 1000, 86_400, 0)], NOW)
    leased_unused = 1000 - day.windows[0].remaining - 60
    assert 0 <= leased_unused <= 3 * 1000 // 50  # at most one chunk per replica


async def test_a_spent_window_refuses_without_asking_the_backend() -> None:
    shared = SlowBackend()
    limiter = LeasingLimiter(shared)  # type: ignore[arg-type]
    minute = [Window("minute", 5, 60, 1)]
    assert [(await limiter.hit("k", minute, NOW)).allowed for _ in range(6)] == [True] * 5 + [
        False]
    calls = shared.calls
    refused = [await limiter.hit("k", minute, NOW + 1) for _ in range(20)]
    assert not any(d.allowed for d in refused) and shared.calls == calls
    assert refused[0].retry_after == pytest.approx(59 - (NOW % 60), abs=1)
    assert (await limiter.hit("k", minute, NOW + 60)).allowed  # the next window asks again


async def test_room_is_what_the_process_holds_of_the_current_window() -> None:
    shared = MemoryLimiter()
    limiter = LeasingLimiter(shared)
    tokens = Window("tokens_minute", 10_000, 60, 100)
    assert limiter.room("k", tokens, NOW) == 0  # nothing leased yet: the backend must say
    for _ in range(2):  # the first lease takes what one call needs; then chunks double
        assert (await limiter.hit("k", [tokens], NOW)).allowed
    held = limiter.room("k", tokens, NOW)
    assert held == 100  # leased 100, then 200; used 2 x 100
    # what it holds is surely there: a hit costing that much asks no backend
    calls = limiter.backend_calls
    assert (await limiter.hit("k", [tokens._replace(cost=held)], NOW)).allowed
    assert limiter.backend_calls == calls and limiter.room("k", tokens, NOW) == 0
    assert limiter.room("k", tokens, NOW + 60) == 0  # a new window: the old lease lapsed


async def test_memory_room_is_what_is_left_of_the_window() -> None:
    limiter = MemoryLimiter()
    tokens = Window("tokens_minute", 100, 60, 30)
    assert limiter.room("k", tokens, NOW) == 100
    assert (await limiter.hit("k", [tokens], NOW)).allowed
    assert limiter.room("k", tokens, NOW) == 70
    await limiter.adjust("k", tokens, -10, NOW)  # the call used 20 of its 30
    assert limiter.room("k", tokens, NOW) == 80
    await limiter.adjust("k", tokens, 500, NOW)  # a call that used far more than it said
    assert limiter.room("k", tokens, NOW) == 0
    assert limiter.room("k", tokens, NOW + 60) == 100
    assert limiter.room("other", tokens, NOW) == 100


async def test_the_request_rate_carries_over_into_the_next_window() -> None:
    """The first lease of a new window is sized by the rate the last one saw (the rate
    lives with the lease, and is forgotten with it), not started from one call's need."""
    limiter = LeasingLimiter(MemoryLimiter())
    window = Window("minute", 10**6, 60, 1)
    for _ in range(50):
        assert (await limiter.hit("k", [window], NOW)).allowed
    await asyncio.sleep(0.06)  # long enough for a rate to be worked out (MIN_RATE_SPAN_S)
    assert (await limiter.hit("k", [window], NOW + 60)).allowed
    assert limiter.room("k", window, NOW + 60) > 0  # 0.25 s of the last window's rate, less one
    fresh = LeasingLimiter(MemoryLimiter())
    assert (await fresh.hit("k", [window], NOW + 60)).allowed
    assert fresh.room("k", window, NOW + 60) == 0  # no history: only what the call needed
