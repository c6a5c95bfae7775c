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

# Errors that mean "the store is down, slow or unreachable", not "the request was wrong".
# The Redis and Upstash clients add theirs when they are imported (`unreachable_too`): a
# gateway on the memory or postgres backend never loads them (about 12 MB).
UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,
)


def unreachable_too(*errors: type[Exception]) -> None:
    """Count `errors` as "the store could not answer" from now on."""
    global UNREACHABLE
    UNREACHABLE = (*UNREACHABLE, *(e for e in errors if e not in UNREACHABLE))


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
