"""Retries, circuit breakers and weighted choice: the pure parts of reaching a provider.

- `backoff_delay`: exponential backoff with full jitter (AWS's "Exponential Backoff and
  Jitter"), so retries from many clients spread out instead of arriving together.
- `retry_after_s`: a `Retry-After` header (seconds or an HTTP date) as seconds.
- `CircuitBreaker`: per provider; after `failures` consecutive failures it opens and calls
  skip the provider for `cooldown_s`, then one probe call is let through (half-open): a
  success closes it, a failure opens it again.
- `weighted_order`: credentials in a random order drawn by weight, without replacement, so
  the first is chosen in proportion to its weight and the rest are the fallbacks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_delay(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number `retry` (0 for the first retry): full jitter."""
    return rng.uniform(0.0, min(cap_s, base_s * (2 ** retry)))


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = CLOSED
        self._probing = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to this provider now (takes the one half-open probe)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._failures, self._state, self._probing = 0, CLOSED, False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._state, self._opened_at, self._probing = OPEN, self._clock(), False

    def release(self) -> None:
        """A probe that ended with neither verdict (the client left): let another probe."""
        self._probing = False


def weighted_order(items: Sequence[T], weight: Callable[[T], int],
                   rng: random.Random) -> list[T]:
    """Items drawn one by one in proportion to their weight; weight 0 comes last, in order."""
    pool = [item for item in items if weight(item) > 0]
    order: list[T] = []
    while pool:
        if len(pool) == 1:
            order.append(pool.pop())
            break
        pick = rng.uniform(0, sum(weight(i) for i in pool))
        for n, item in enumerate(pool):
            pick -= weight(item)
            if pick <= 0 or n == len(pool) - 1:
                order.append(pool.pop(n))
                break
    order.extend(item for item in items if weight(item) <= 0)
    return order
