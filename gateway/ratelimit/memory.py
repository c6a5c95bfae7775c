"""In-process rate limiter: exact for one process, and the fail-open fallback for the others.

`hit` never awaits, so on one event loop each call is atomic without a lock. Counters are
kept per (key, window name, window start) and forgotten once their window is over, so memory
grows with the number of active keys only.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence

from gateway.ratelimit.base import Decision, Window, blocked, decide, plan, window_start

CounterKey = tuple[str, str, int]  # key, window name, window start


class MemoryLimiter:
    name = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._counts: dict[CounterKey, int] = {}
        # (forget at, counter): expiry follows the real clock like Redis TTLs do, whatever
        # `now` a caller passes in, so a counter lives its whole window plus a little.
        self._expiry: list[tuple[float, CounterKey]] = []

    def __len__(self) -> int:
        return len(self._counts)

    async def hit(self, key: str, windows: Sequence[Window], now: float | None = None) -> Decision:
        now = self._clock() if now is None else now
        slots = plan(windows, now)
        self._forget_expired()
        counters = [(key, s.window.name, s.start) for s in slots]
        used = [self._counts.get(c, 0) for c in counters]
        if blocked(slots, used):
            return decide(slots, used, False, now, self.name)
        for i, (slot, counter) in enumerate(zip(slots, counters, strict=True)):
            used[i] += slot.window.cost
            self._store(counter, used[i], slot.window.seconds)
        return decide(slots, used, True, now, self.name)

    def room(self, key: str, window: Window, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        used = self._counts.get((key, window.name, window_start(window, now)), 0)
        return max(window.limit - used, 0)

    async def adjust(self, key: str, window: Window, delta: int, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        counter = (key, window.name, window_start(window, now))
        if counter not in self._counts and delta <= 0:
            return  # nothing to take back from a window never used
        self._store(counter, max(0, self._counts.get(counter, 0) + delta), window.seconds)

    async def close(self) -> None:
        self._counts.clear()
        self._expiry.clear()

    def _store(self, counter: CounterKey, value: int, seconds: int) -> None:
        if counter not in self._counts:
            heapq.heappush(self._expiry, (self._monotonic() + seconds + 1, counter))
        self._counts[counter] = value

    def _forget_expired(self) -> None:
        now = self._monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, counter = heapq.heappop(self._expiry)
            self._counts.pop(counter, None)
