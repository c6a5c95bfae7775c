"""One boundary where store client errors become `BackendUnavailable` (as httpx maps httpcore's).

Rate limiters and idempotency stores run every store call inside `store_call`, which enforces
the call's time limit and turns "the store could not answer" into one exception type that the
resilient wrappers act on. Any other error (a Lua bug, bad SQL) propagates unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import redis.exceptions

# Errors that mean "the store is down, slow or unreachable", not "the request was wrong".
UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,
    redis.exceptions.ConnectionError,  # includes redis AuthenticationError
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,  # a replica mid-failover
    httpx.TransportError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,
)


class BackendUnavailable(Exception):
    """The store behind a limiter or claim store could not answer."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason


class BackendAuthError(BackendUnavailable):
    """The store refused the configured credentials (e.g. Upstash answered 401)."""


@asynccontextmanager
async def store_call(backend: str, timeout_s: float) -> AsyncIterator[None]:
    """Bound one store call by `timeout_s` and map unreachability to `BackendUnavailable`."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:  # asyncio.timeout, socket and pool timeouts alike
        raise BackendUnavailable(backend, f"no answer within {timeout_s:g} s") from exc
    except UNREACHABLE as exc:
        raise BackendUnavailable(backend, f"{type(exc).__name__}: {exc}") from exc
