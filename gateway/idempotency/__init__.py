"""Idempotency claims on the rate limiter's backend: memory, redis, upstash or postgres."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.idempotency.base import Claim, ClaimStore
from gateway.idempotency.memory import MemoryClaims
from gateway.idempotency.postgres import PostgresClaims
from gateway.idempotency.resilient import ResilientClaims
from gateway.ratelimit import require_upstash
from gateway.settings import RateLimitSettings, SettingsError

if TYPE_CHECKING:
    from gateway.idempotency.redis import RedisClaims
    from gateway.idempotency.upstash import UpstashClaims

__all__ = [
    "Claim",
    "ClaimStore",
    "MemoryClaims",
    "PostgresClaims",
    "RedisClaims",
    "ResilientClaims",
    "UpstashClaims",
    "create_claims",
]


def __getattr__(name: str) -> Any:
    """The Redis and Upstash claim stores, imported when first asked for (see
    `gateway.ratelimit.__getattr__`)."""
    if name == "RedisClaims":
        from gateway.idempotency.redis import RedisClaims
        return RedisClaims
    if name == "UpstashClaims":
        from gateway.idempotency.upstash import UpstashClaims
        return UpstashClaims
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_claims(settings: RateLimitSettings, pool: asyncpg.Pool) -> ClaimStore:
    """The configured backend; all but memory wrapped in the configured failure policy."""
    primary: ClaimStore
    if settings.backend == "memory":
        return MemoryClaims()
    if settings.backend == "redis":
        from gateway.idempotency.redis import RedisClaims
        primary = RedisClaims.from_url(settings.redis_url, timeout_s=settings.timeout_s)
    elif settings.backend == "upstash":
        require_upstash(settings)
        from gateway.idempotency.upstash import UpstashClaims
        primary = UpstashClaims.from_url(settings.upstash_url, settings.upstash_token,
                                         timeout_s=settings.timeout_s)
    elif settings.backend == "postgres":
        primary = PostgresClaims(pool, timeout_s=settings.timeout_s)
    else:
        raise SettingsError(f"ratelimit.backend: unknown backend {settings.backend!r}")
    return ResilientClaims(primary, settings.failure_policy)
