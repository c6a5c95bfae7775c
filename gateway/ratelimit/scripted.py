"""A rate limiter over any Redis-compatible store: one Lua script per hit, all windows at once.

Counters are `{prefix}:{{key}}:{window name}:{window start}` with a TTL of the window length
plus a little, so a replica whose clock is a few seconds off still finds its counter. The
key sits in braces, a Redis Cluster hash tag: one script's keys must share a slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.ratelimit import lua
from gateway.ratelimit.base import Decision, Window, decide, plan, window_start
from gateway.ratelimit.errors import store_call

if TYPE_CHECKING:  # the clients import redis and upstash: only when a backend needs them
    from gateway.ratelimit.clients import ScriptRunner

TTL_SLACK_S = 5


class ScriptedLimiter:
    name = "scripted"

    def __init__(self, scripts: ScriptRunner, *, timeout_s: float, prefix: str = "rl",
                 clock: Callable[[], float] = time.time) -> None:
        self._scripts = scripts
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._clock = clock

    def _counter(self, key: str, window: Window, start: int) -> str:
        return f"{self._prefix}:{{{key}}}:{window.name}:{start}"

    async def hit(self, key: str, windows: Sequence[Window], now: float | None = None) -> Decision:
        now = self._clock() if now is None else now
        slots = plan(windows, now)
        if not slots:
            return decide(slots, [], True, now, self.name)
        keys = [self._counter(key, s.window, s.start) for s in slots]
        args = [v for s in slots
                for v in (s.window.limit, s.window.cost, s.window.seconds + TTL_SLACK_S)]
        async with store_call(self.name, self._timeout_s):
            reply = await self._scripts.run(lua.HIT, keys, args)
        return decide(slots, [int(v) for v in reply[1:]], int(reply[0]) == 1, now, self.name)

    async def adjust(self, key: str, window: Window, delta: int, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        counter = self._counter(key, window, window_start(window, now))
        async with store_call(self.name, self._timeout_s):
            await self._scripts.run(lua.ADJUST, [counter], [delta, window.seconds + TTL_SLACK_S])

    async def close(self) -> None:
        await self._scripts.close()
