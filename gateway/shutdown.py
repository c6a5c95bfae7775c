"""`Shutdown`: one deadline for the whole drain, so SIGTERM ends within
`server.shutdown_timeout_s` (plus a small constant) whatever the database does.

The clock starts at SIGTERM. Requests in flight get what is left less a reserve; the budget
leases and the ledger share what remains after them, each given at least a floor so that the
ledger can always spill what it could not write.
"""

from __future__ import annotations

import time
from collections.abc import Callable

TEARDOWN_RESERVE_S = 1.0  # kept from the requests' share for leases, the ledger and the pool
FLOOR_S = 0.25  # the least any step of the teardown is given


class Shutdown:
    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._stop_by: float | None = None

    @property
    def started(self) -> bool:
        return self._stop_by is not None

    def begin(self) -> None:
        """SIGTERM: from now on everything must be done within `timeout_s`."""
        if self._stop_by is None:
            self._stop_by = self._clock() + self.timeout_s

    def remaining(self) -> float:
        """Seconds left (at least FLOOR_S); the whole timeout before `begin()`."""
        if self._stop_by is None:
            return max(self.timeout_s, FLOOR_S)
        return max(self._stop_by - self._clock(), FLOOR_S)

    def for_requests(self) -> float:
        """What requests in flight may still take, the teardown's reserve kept back."""
        reserve = min(TEARDOWN_RESERVE_S, self.timeout_s / 4)
        return max(self.remaining() - reserve, FLOOR_S)
