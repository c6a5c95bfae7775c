"""Rate-limit units leased to this process in chunks, so the hot path rarely calls the backend.

The same idea as budget leases: a busy process takes a chunk of units from the shared
counter (one atomic backend call for every window of the request) and spends it locally;
the chunk follows the recent request rate and at least doubles with each lease in a
window, up to 1/50 of the limit. Near a window's limit it takes only what the
request in hand needs, so a limit of 60 lets exactly 60 requests through across all
replicas. Units a process leased and did not use lapse with their window: the shared count
never exceeds the limit, at the price of a little unused allowance at the window's end,
bounded by one chunk per process: a process has one lease in flight per key at a time, and
the requests that wait for it use what it brought before asking for more.

Token windows are settled locally too: unused reserved tokens go back to the lease.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.ratelimit.base import Decision, RateLimiter, Window, WindowState, window_start

CHUNK_SECONDS = 0.25  # lease about this much of the recent rate at a time
MAX_CHUNK_SHARE = 50  # never lease more than limit / this in one go
MIN_RATE_SPAN_S = 0.05
# Every covered hit makes a state for each window and a decision: named tuples made as
# plain tuples are, since their generated `__new__` is a Python function that costs as much
# again (tuple.__new__ takes the fields in order, as the generated one passes them).
_new = tuple.__new__


@dataclass(slots=True)
class _Rate:
    """Units asked for since the last lease: counted on the hot path, turned into a rate
    only when a lease is due."""

    units: int = 0
    since: float = field(default_factory=time.monotonic)
    per_second: float = 0.0

    def update(self) -> float:
        now = time.monotonic()
        elapsed = now - self.since
        if elapsed >= MIN_RATE_SPAN_S:
            self.per_second = self.units / elapsed
            self.units, self.since = 0, now
        return self.per_second


@dataclass(slots=True)
class _Lease:
    # The window's bounds, as floats: the lease is the current one while start <= now < end,
    # asked at every hit, room and adjust, and a float compares with `now` (a float) at
    # half the cost of an int as large as an epoch second.
    start: float
    end: float
    rate: _Rate = field(default_factory=_Rate)  # carried from one window to the next
    leased: int = 0
    available: int = 0  # leased and not used (below 0 when a settle used more than it had)
    remaining: int = 0  # the shared window's remaining units, as the backend last said
    reset_at: float = 0.0
    last_chunk: int = 0  # chunks at least double within a window, up to the caps


class LeasingLimiter:
    def __init__(self, backend: RateLimiter) -> None:
        self._backend = backend
        self.name = backend.name
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.backend_calls = 0

    async def hit(self, key: str, windows: Sequence[Window], now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        leases = []
        covered = True  # every window's lease has the units this request needs
        for w in windows:
            lease = self._leases.get((key, w.name))  # `_lease`, its usual case inlined
            if lease is None or not lease.start <= now < lease.end:
                lease = self._lease(key, w, now)
            leases.append(lease)
            if lease.available < w.cost:
                covered = False
            lease.rate.units += w.cost
        if covered:
            return self._consume(leases, windows, self.name)
        async with self._lock(key):  # one lease in flight per key; the others then use it
            leases = [self._lease(key, w, now) for w in windows]
            if all(lease.available >= w.cost for lease, w in zip(leases, windows, strict=True)):
                return self._consume(leases, windows, self.name)
            return await self._lease_and_consume(key, windows, leases, now)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) > 100_000:  # keys come and go: keep only the ones in use
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _lease_and_consume(self, key: str, windows: Sequence[Window],
                                 leases: list[_Lease], now: float) -> Decision:
        # A shared count never goes down within its window: what the backend last said was
        # left is an upper bound, and a request needing more is refused without asking it.
        short = [lease for lease, w in zip(leases, windows, strict=True)
                 if w.cost - lease.available > lease.remaining]
        if short:
            return Decision(False, tuple(
                WindowState(w.name, w.limit, lease.remaining, lease.reset_at)
                for w, lease in zip(windows, leases, strict=True)),
                max(max(lease.reset_at - now for lease in short), 0.0), self.name)
        # Only the windows this request runs short on lease more: topping up the others too
        # would, at every lease, take units of a long window (a day) that lapse unused,
        # starving the other replicas of them.
        chunked = [Window(w.name, w.limit, w.seconds,
                          0 if lease.available >= w.cost else self._chunk(key, w, lease))
                   for w, lease in zip(windows, leases, strict=True)]
        decision = await self._lease_more(key, chunked, leases, now)
        if not decision.allowed and chunked != list(windows):
            needed = [Window(w.name, w.limit, w.seconds, max(w.cost - lease.available, 0))
                      for w, lease in zip(windows, leases, strict=True)]
            decision = await self._lease_more(key, needed, leases, now)
        if not decision.allowed:
            return decision
        return self._consume(leases, windows, decision.backend)

    def room(self, key: str, window: Window, now: float | None = None) -> int:
        """What this process holds of the window's current lease and has not used."""
        lease = self._leases.get((key, window.name))
        now = time.time() if now is None else now
        if lease is None or not lease.start <= now < lease.end:
            return 0
        # Below 0: a settle used more than the lease held. (A conditional, not max(): every
        # call with a tokens window asks, and a builtin's call costs more than the test.)
        return lease.available if lease.available > 0 else 0

    async def adjust(self, key: str, window: Window, delta: int, now: float | None = None) -> None:
        """Settle locally against the lease of the window the units were taken from."""
        now = time.time() if now is None else now
        lease = self._leases.get((key, window.name))
        if lease is not None and lease.start <= now < lease.end:
            available = lease.available - delta  # at most all of it back (as `room`, no min())
            lease.available = available if available < lease.leased else lease.leased
        elif delta > 0:
            await self._backend.adjust(key, window, delta, now)

    async def close(self) -> None:
        await self._backend.close()

    def _lease(self, key: str, window: Window, now: float) -> _Lease:
        lease = self._leases.get((key, window.name))
        if lease is None or not lease.start <= now < lease.end:  # a new window: old units lapse
            start = float(window_start(window, now))
            end = start + window.seconds
            lease = self._leases[(key, window.name)] = _Lease(
                start, end, lease.rate if lease is not None else _Rate(),
                remaining=window.limit, reset_at=end)
            if len(self._leases) > 100_000:
                self._leases = {k: v for k, v in self._leases.items() if v.start >= start}
        return lease

    def _chunk(self, key: str, window: Window, lease: _Lease) -> int:
        need = max(window.cost - lease.available, 0)
        rate = lease.rate.update()
        wanted = max(math.ceil(rate * CHUNK_SECONDS), 2 * lease.last_chunk)
        cap = min(window.limit // MAX_CHUNK_SHARE, lease.remaining // 8)
        lease.last_chunk = max(need, min(wanted, cap))
        return lease.last_chunk

    async def _lease_more(self, key: str, chunk: list[Window], leases: list[_Lease],
                          now: float) -> Decision:
        self.backend_calls += 1
        decision = await self._backend.hit(key, chunk, now)
        for lease, w, state in zip(leases, chunk, decision.windows, strict=True):
            lease.remaining, lease.reset_at = state.remaining, state.reset_at
            if decision.allowed:
                lease.leased += w.cost
                lease.available += w.cost
        return decision

    @staticmethod
    def _consume(leases: list[_Lease], windows: Sequence[Window], backend: str) -> Decision:
        states = []
        for lease, w in zip(leases, windows, strict=True):
            lease.available -= w.cost
            states.append(_new(WindowState, (w.name, w.limit, lease.remaining + lease.available,
                                             lease.reset_at)))
        return _new(Decision, (True, tuple(states), 0.0, backend))
