"""A rate limiter that survives its store: 503 (fail_closed) or per-process limits (fail_open)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.ratelimit.base import Decision, RateLimiter, Window
from gateway.ratelimit.errors import BackendUnavailable
from gateway.ratelimit.memory import MemoryLimiter
from gateway.ratelimit.policy import FailurePolicy


class ResilientLimiter:
    """Wraps `primary`; when it cannot answer, applies `policy` ("fail_closed" or "fail_open").

    Under fail_open the per-process `fallback` decides (`Decision.backend == "memory"`) and
    `fallbacks` counts how often. `adjust` follows the same policy.
    """

    def __init__(self, primary: RateLimiter, policy: str,
                 fallback: RateLimiter | None = None) -> None:
        self.name = primary.name
        self._primary = primary
        self._fallback = fallback if fallback is not None else MemoryLimiter()
        self._policy = FailurePolicy(policy, what="rate limiting", code="ratelimit_unavailable")

    @property
    def fallbacks(self) -> int:
        return self._policy.fallbacks

    async def hit(self, key: str, windows: Sequence[Window], now: float | None = None) -> Decision:
        try:
            return await self._primary.hit(key, windows, now)
        except BackendUnavailable as exc:
            self._policy.on_unavailable(exc)
        return await self._fallback.hit(key, windows, now)

    async def adjust(self, key: str, window: Window, delta: int, now: float | None = None) -> None:
        try:
            await self._primary.adjust(key, window, delta, now)
            return
        except BackendUnavailable as exc:
            self._policy.on_unavailable(exc)
        await self._fallback.adjust(key, window, delta, now)

    async def close(self) -> None:
        try:
            await self._primary.close()
        finally:
            await self._fallback.close()
