"""PostgreSQL rate limiter: one call of `ratelimit_hit` (migrations/0003) per hit.

The function locks the window counters in a fixed order, checks them all and consumes all
or none, inside the single statement's transaction. Expired counters are deleted by an
`ExpirySweeper` in the background, at most once per interval and in bounded batches, so
the hot path stays one round trip. The pool belongs to the caller and is not closed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import asyncpg

from gateway.ratelimit.base import Decision, Window, decide, plan, window_start
from gateway.ratelimit.errors import store_call
from gateway.ratelimit.scripted import TTL_SLACK_S
from gateway.ratelimit.sweeper import ExpirySweeper

HIT_SQL = "SELECT allowed, used FROM ratelimit_hit($1, $2, $3, $4, $5)"
ADJUST_SQL = """
INSERT INTO ratelimit_counters AS c (key, window_start, used, expires_at)
VALUES ($1, $2, greatest($3::bigint, 0), clock_timestamp() + make_interval(secs => $4))
ON CONFLICT (key, window_start) DO UPDATE SET used = greatest(c.used + $3::bigint, 0)
"""


class PostgresLimiter:
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float, prefix: str = "rl",
                 sweep_interval_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._clock = clock
        self.sweeper = ExpirySweeper(pool, "ratelimit_counters", "key, window_start",
                                     interval_s=sweep_interval_s)

    async def hit(self, key: str, windows: Sequence[Window], now: float | None = None) -> Decision:
        now = self._clock() if now is None else now
        slots = plan(windows, now)
        if not slots:
            return decide(slots, [], True, now, self.name)
        async with store_call(self.name, self._timeout_s):
            row = await self._pool.fetchrow(
                HIT_SQL,
                [f"{self._prefix}:{key}:{s.window.name}" for s in slots],
                [s.start for s in slots],
                [s.window.limit for s in slots],
                [s.window.cost for s in slots],
                [float(s.window.seconds + TTL_SLACK_S) for s in slots])
        self.sweeper.poke()
        assert row is not None
        return decide(slots, row["used"], row["allowed"], now, self.name)

    async def adjust(self, key: str, window: Window, delta: int, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        if delta == 0:
            return
        async with store_call(self.name, self._timeout_s):
            await self._pool.execute(
                ADJUST_SQL, f"{self._prefix}:{key}:{window.name}", window_start(window, now),
                delta, float(window.seconds + TTL_SLACK_S))

    async def close(self) -> None:
        await self.sweeper.close()
