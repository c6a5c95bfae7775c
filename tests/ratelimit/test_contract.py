"""One contract for every rate-limit backend (the `limiter` fixture runs each on its store)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.ratelimit import RateLimiter, Window

DAY_START = 1_699_920_000.0  # a UTC midnight: minute and day windows both start here
T0 = DAY_START + 10  # 10 s into a minute: that window resets at T0 + 50


def minute(limit: int, cost: int = 1, name: str = "minute") -> Window:
    return Window(name, limit, 60, cost)


def day(limit: int) -> Window:
    return Window("day", limit, 86_400, 1)


async def test_limit_is_exactly_respected(limiter: RateLimiter) -> None:
    for expected_remaining in (4, 3, 2, 1, 0):
        decision = await limiter.hit("k", [minute(5)], now=T0)
        assert decision.allowed
        assert decision.windows[0].remaining == expected_remaining
        assert decision.retry_after == 0.0
    rejected = await limiter.hit("k", [minute(5)], now=T0)
    assert not rejected.allowed
    assert rejected.windows[0].remaining == 0
    assert rejected.windows[0].reset_at == DAY_START + 60 > T0
    assert rejected.retry_after == pytest.approx(50.0)
    assert rejected.backend == limiter.name


async def test_rejected_by_day_consumes_no_minute_units(limiter: RateLimiter) -> None:
    windows = [minute(10), day(3)]
    for _ in range(3):
        assert (await limiter.hit("k", windows, now=T0)).allowed
    rejected = await limiter.hit("k", windows, now=T0)
    assert not rejected.allowed
    assert [w.remaining for w in rejected.windows] == [7, 0]
    assert rejected.retry_after == pytest.approx(DAY_START + 86_400 - T0)
    # The minute window alone proves the rejected hit took nothing from it.
    allowed = await limiter.hit("k", [minute(10)], now=T0)
    assert allowed.windows[0].remaining == 6


async def test_rejected_by_minute_consumes_no_day_units(limiter: RateLimiter) -> None:
    windows = [minute(2), day(10)]
    for _ in range(2):
        assert (await limiter.hit("k", windows, now=T0)).allowed
    for _ in range(3):
        rejected = await limiter.hit("k", windows, now=T0)
        assert not rejected.allowed
        assert [w.remaining for w in rejected.windows] == [0, 8]
        assert rejected.retry_after == pytest.approx(50.0)
    next_minute = await limiter.hit("k", windows, now=T0 + 50)
    assert next_minute.allowed
    assert [w.remaining for w in next_minute.windows] == [1, 7]


async def test_retry_after_waits_for_every_blocking_window(limiter: RateLimiter) -> None:
    windows = [minute(1), day(1)]
    assert (await limiter.hit("k", windows, now=T0)).allowed
    rejected = await limiter.hit("k", windows, now=T0)
    assert not rejected.allowed
    assert rejected.retry_after == pytest.approx(DAY_START + 86_400 - T0)


async def test_remaining_and_reset_per_window(limiter: RateLimiter) -> None:
    windows = [Window("second10", 3, 10, 1), minute(5), day(100)]
    decision = await limiter.hit("k", windows, now=T0 + 3)  # 13 s into the minute
    assert decision.allowed
    assert [(w.name, w.limit, w.remaining) for w in decision.windows] == [
        ("second10", 3, 2), ("minute", 5, 4), ("day", 100, 99)]
    assert [w.reset_at for w in decision.windows] == [
        DAY_START + 20, DAY_START + 60, DAY_START + 86_400]


async def test_window_rollover(limiter: RateLimiter) -> None:
    for _ in range(2):
        assert (await limiter.hit("k", [minute(2)], now=T0)).allowed
    assert not (await limiter.hit("k", [minute(2)], now=T0 + 49.9)).allowed
    fresh = await limiter.hit("k", [minute(2)], now=T0 + 50)
    assert fresh.allowed
    assert fresh.windows[0].remaining == 1
    assert fresh.windows[0].reset_at == DAY_START + 120
    # The old window is still full if time steps back (another replica's clock).
    assert not (await limiter.hit("k", [minute(2)], now=T0)).allowed


async def test_token_costs(limiter: RateLimiter) -> None:
    tokens = 100
    first = await limiter.hit("k", [minute(tokens, cost=60, name="tokens_minute")], now=T0)
    assert first.allowed and first.windows[0].remaining == 40
    too_many = await limiter.hit("k", [minute(tokens, cost=50, name="tokens_minute")], now=T0)
    assert not too_many.allowed and too_many.windows[0].remaining == 40
    exact = await limiter.hit("k", [minute(tokens, cost=40, name="tokens_minute")], now=T0)
    assert exact.allowed and exact.windows[0].remaining == 0


async def test_cost_above_limit_is_always_rejected(limiter: RateLimiter) -> None:
    windows = [minute(2), minute(100, cost=101, name="tokens_minute")]
    rejected = await limiter.hit("k", windows, now=T0)
    assert not rejected.allowed
    assert [w.remaining for w in rejected.windows] == [2, 100]
    assert (await limiter.hit("k", [minute(2)], now=T0)).windows[0].remaining == 1


async def test_adjust_up_and_down_never_below_zero(limiter: RateLimiter) -> None:
    reserve = minute(100, cost=60, name="tokens_minute")
    assert (await limiter.hit("k", [reserve], now=T0)).windows[0].remaining == 40
    await limiter.adjust("k", reserve, -50, now=T0)  # only 10 were used
    after_return = await limiter.hit("k", [minute(100, cost=90, name="tokens_minute")], now=T0)
    assert after_return.allowed and after_return.windows[0].remaining == 0
    await limiter.adjust("k", reserve, 30, now=T0)  # used more than reserved: no limit check
    over = await limiter.hit("k", [minute(100, cost=1, name="tokens_minute")], now=T0)
    assert not over.allowed and over.windows[0].remaining == 0
    await limiter.adjust("k", reserve, -1000, now=T0)
    full = await limiter.hit("k", [minute(100, cost=100, name="tokens_minute")], now=T0)
    assert full.allowed and full.windows[0].remaining == 0


async def test_adjust_touches_only_the_current_window(limiter: RateLimiter) -> None:
    window = minute(10, cost=5)
    await limiter.adjust("fresh", window, -3, now=T0)  # nothing to return: no error, no debt
    assert (await limiter.hit("fresh", [window], now=T0)).windows[0].remaining == 5
    await limiter.adjust("fresh", window, 4, now=T0 + 60)  # the next minute
    assert (await limiter.hit("fresh", [window], now=T0)).windows[0].remaining == 0
    assert (await limiter.hit("fresh", [window], now=T0 + 60)).windows[0].remaining == 1


async def test_concurrent_hits_admit_exactly_the_limit(limiter: RateLimiter) -> None:
    windows = [minute(60), day(1000)]
    decisions = await asyncio.gather(*(limiter.hit("k", windows, now=T0) for _ in range(200)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 60
    assert sorted(d.windows[0].remaining for d in allowed) == list(range(60))
    # All or none under contention too: the day window was charged exactly 60 times.
    check = await limiter.hit("k", [day(1000)], now=T0)
    assert check.windows[0].remaining == 1000 - 61


async def test_window_order_does_not_matter_under_contention(limiter: RateLimiter) -> None:
    # Opposite orders on one key: a store locking per window must not deadlock.
    orders = ([minute(30), day(500)], [day(500), minute(30)])
    decisions = await asyncio.gather(
        *(limiter.hit("k", orders[i % 2], now=T0) for i in range(100)))
    assert sum(d.allowed for d in decisions) == 30
    check = await limiter.hit("k", [day(500)], now=T0)
    assert check.windows[0].remaining == 500 - 31


async def test_keys_are_isolated(limiter: RateLimiter) -> None:
    assert (await limiter.hit("project:1", [minute(1)], now=T0)).allowed
    assert not (await limiter.hit("project:1", [minute(1)], now=T0)).allowed
    other = await limiter.hit("project:2", [minute(1)], now=T0)
    assert other.allowed and other.windows[0].remaining == 0
    # Same key, another window name: a counter of its own.
    assert (await limiter.hit("project:1", [minute(1, name="other")], now=T0)).allowed


async def test_no_windows_is_allowed(limiter: RateLimiter) -> None:
    decision = await limiter.hit("k", [], now=T0)
    assert decision.allowed and decision.windows == () and decision.retry_after == 0.0


async def test_default_now_is_the_wall_clock(limiter: RateLimiter) -> None:
    import time

    before = time.time()
    decision = await limiter.hit("k", [minute(3)])
    assert before < decision.windows[0].reset_at <= time.time() + 60


@pytest.mark.parametrize("windows", [
    [minute(0)],
    [minute(5), minute(6)],
    [minute(5, cost=-1)],
], ids=["zero-limit", "duplicate-names", "negative-cost"])
async def test_invalid_windows_are_refused(limiter: RateLimiter, windows: list[Window]) -> None:
    with pytest.raises(ValueError):
        await limiter.hit("k", windows, now=T0)
