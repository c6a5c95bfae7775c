"""In-process claims: exact for one process, and the fail-open fallback for the others.

`claim` never awaits, so it is atomic on one event loop. Expired claims are forgotten; past
`max_entries` the claims closest to expiry are forgotten first, so memory stays bounded.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from gateway.idempotency.base import Claim

ClaimKey = tuple[int, str]


class MemoryClaims:
    name = "memory"

    def __init__(self, *, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._holders: dict[ClaimKey, tuple[str, float]] = {}  # holder, expires at
        self._expiry: list[tuple[float, ClaimKey]] = []

    def __len__(self) -> int:
        return len(self._holders)

    async def claim(self, project_id: int, client_request_id: str, gateway_request_id: str,
                    ttl_s: float) -> Claim:
        now = self._clock()
        self._forget(lambda expires: expires <= now)
        key = (project_id, client_request_id)
        held = self._holders.get(key)
        if held is not None:
            return Claim(held[0] == gateway_request_id, held[0])
        if len(self._holders) >= self._max_entries:
            self._forget(lambda _: len(self._holders) >= self._max_entries)
        self._holders[key] = (gateway_request_id, now + ttl_s)
        heapq.heappush(self._expiry, (now + ttl_s, key))
        return Claim(True, gateway_request_id)

    async def close(self) -> None:
        self._holders.clear()
        self._expiry.clear()

    def _forget(self, while_: Callable[[float], bool]) -> None:
        """Drop claims in expiry order while `while_(expires_at)` holds."""
        while self._expiry and while_(self._expiry[0][0]):
            expires, key = heapq.heappop(self._expiry)
            held = self._holders.get(key)
            if held is not None and held[1] == expires:
                del self._holders[key]
