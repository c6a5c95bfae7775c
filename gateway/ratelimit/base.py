"""Rate limiting: the windows to enforce, the decision, and the one `RateLimiter` Protocol.

Windows are fixed and aligned (`start = floor(now / seconds) * seconds`), so every replica
and every backend agrees on which counter a request lands in without talking to the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# Window, WindowState and Decision are made for every limited call: named tuples, which a
# frozen dataclass costs twice as much to make (each field set through object.__setattr__).


class Window(NamedTuple):
    """One limit to enforce: `limit` units per `seconds`; this request consumes `cost`."""

    name: str  # e.g. "minute", "day", "tokens_minute"
    limit: int
    seconds: int
    cost: int


class WindowState(NamedTuple):
    name: str
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when this window ends


class Decision(NamedTuple):
    allowed: bool
    windows: tuple[WindowState, ...]  # in the order given; remaining after this request if allowed
    retry_after: float  # seconds until every blocking window has reset; 0.0 when allowed
    backend: str  # the backend that decided


class RateLimiter(Protocol):
    name: str

    async def hit(self, key: str, windows: Sequence[Window], now: float | None = None) -> Decision:
        """Check and consume every window in ONE atomic step: a rejected request consumes none."""
        ...

    async def adjust(self, key: str, window: Window, delta: int, now: float | None = None) -> None:
        """Add `delta` (may be negative) to the current window's count; never below 0."""
        ...

    async def close(self) -> None: ...


class LocalLimiter(RateLimiter, Protocol):
    """The limiter the pipeline holds (memory, or a shared backend behind leases): one that
    can also say, without asking anyone, how much of a window is surely left to it."""

    def room(self, key: str, window: Window, now: float | None = None) -> int:
        """Units of `window` that a `hit` now would find for this process without asking a
        backend: a request costing no more is refused only by its other windows."""
        ...


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one window of one request lands: its aligned start and end."""

    window: Window
    start: int
    reset_at: float


def window_start(window: Window, now: float) -> int:
    return math.floor(now / window.seconds) * window.seconds


def plan(windows: Sequence[Window], now: float) -> list[Slot]:
    """Validate the windows once and place each in its current slot."""
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        raise ValueError(f"window names must be unique, got {names}")
    slots = []
    for w in windows:
        if w.limit <= 0 or w.seconds <= 0 or w.cost < 0:
            raise ValueError(f"window {w.name!r} needs limit > 0, seconds > 0 and cost >= 0")
        start = window_start(w, now)
        slots.append(Slot(w, start, float(start + w.seconds)))
    return slots


def decide(slots: Sequence[Slot], used: Sequence[int], allowed: bool, now: float,
           backend: str) -> Decision:
    """The decision from each window's count: after this request if allowed, else as found."""
    states = tuple(WindowState(s.window.name, s.window.limit, max(0, s.window.limit - u),
                               s.reset_at) for s, u in zip(slots, used, strict=True))
    retry_after = 0.0
    if not allowed:
        # Retrying before every blocking window has reset is bound to fail again.
        retry_after = max(s.reset_at - now for s, u in zip(slots, used, strict=True)
                          if u + s.window.cost > s.window.limit)
    return Decision(allowed, states, retry_after, backend)


def blocked(slots: Sequence[Slot], used: Sequence[int]) -> bool:
    return any(u + s.window.cost > s.window.limit for s, u in zip(slots, used, strict=True))
