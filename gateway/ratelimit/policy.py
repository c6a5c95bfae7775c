"""What to do when a store cannot answer: refuse the request (fail_closed) or fall back (fail_open).

Shared by the resilient rate limiter and the resilient idempotency store.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from gateway.errors import ServiceUnavailable
from gateway.ratelimit.errors import BackendUnavailable

POLICIES = ("fail_closed", "fail_open")


class FailurePolicy:
    """Counts fallbacks and logs a warning at most once per `warn_every_s`."""

    def __init__(self, policy: str, *, what: str, code: str, warn_every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if policy not in POLICIES:
            raise ValueError(f"failure policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.policy = policy
        self.fallbacks = 0
        self._what = what  # e.g. "rate limiting"
        self._code = code
        self._warn_every_s = warn_every_s
        self._clock = clock
        self._warned_at: float | None = None

    def on_unavailable(self, exc: BackendUnavailable) -> None:
        """Raise `ServiceUnavailable` (fail_closed), or count a fallback and return (fail_open)."""
        if self.policy == "fail_open":
            self.fallbacks += 1
        self._warn(exc)
        if self.policy == "fail_closed":
            # The reason (hosts, ports) goes to the log, not to the client.
            raise ServiceUnavailable(
                f"{self._what} is unavailable: the {exc.backend} backend did not answer",
                code=self._code, details={"backend": exc.backend}) from exc

    def _warn(self, exc: BackendUnavailable) -> None:
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < self._warn_every_s:
            return
        self._warned_at = now
        # Looked up per warning (rare): picks up logging set up after this object was made.
        structlog.get_logger(__name__).warning(
            "store_unavailable", what=self._what, backend=exc.backend,
            reason=exc.reason, policy=self.policy, fallbacks=self.fallbacks)
