"""Rate limiting on the configured backend: memory, redis, upstash or postgres."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.ratelimit.base import Decision, LocalLimiter, RateLimiter, Window, WindowState
from gateway.ratelimit.errors import BackendAuthError, BackendUnavailable
from gateway.ratelimit.leasing import LeasingLimiter
from gateway.ratelimit.memory import MemoryLimiter
from gateway.ratelimit.postgres import PostgresLimiter
from gateway.ratelimit.resilient import ResilientLimiter
from gateway.settings import RateLimitSettings, SettingsError

if TYPE_CHECKING:
    from gateway.ratelimit.redis import RedisLimiter
    from gateway.ratelimit.upstash import UpstashLimiter

__all__ = [
    "BackendAuthError",
    "BackendUnavailable",
    "Decision",
    "LeasingLimiter",
    "LocalLimiter",
    "MemoryLimiter",
    "PostgresLimiter",
    "RateLimiter",
    "RedisLimiter",
    "ResilientLimiter",
    "UpstashLimiter",
    "Window",
    "WindowState",
    "create_limiter",
    "require_upstash",
]


def __getattr__(name: str) -> Any:
    """The Redis and Upstash limiters, imported when first asked for (their clients are
    about 12 MB a process on another backend never needs)."""
    if name == "RedisLimiter":
        from gateway.ratelimit.redis import RedisLimiter
        return RedisLimiter
    if name == "UpstashLimiter":
        from gateway.ratelimit.upstash import UpstashLimiter
        return UpstashLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def require_upstash(settings: RateLimitSettings) -> None:
    missing = [name for name, value in (("ratelimit.upstash_url", settings.upstash_url),
                                        ("ratelimit.upstash_token", settings.upstash_token))
               if not value]
    if missing:
        raise SettingsError(
            f"ratelimit.backend = 'upstash' needs {' and '.join(missing)} "
            "(or UPSTASH_REDIS_REST_URL / UPSTASH_REDIS_REST_TOKEN)")


def create_limiter(settings: RateLimitSettings, pool: asyncpg.Pool) -> LocalLimiter:
    """The configured backend; all but memory wrapped in the configured failure policy."""
    primary: RateLimiter
    if settings.backend == "memory":
        return MemoryLimiter()
    if settings.backend == "redis":
        from gateway.ratelimit.redis import RedisLimiter
        primary = RedisLimiter.from_url(settings.redis_url, timeout_s=settings.timeout_s)
    elif settings.backend == "upstash":
        require_upstash(settings)
        from gateway.ratelimit.upstash import UpstashLimiter
        primary = UpstashLimiter.from_url(settings.upstash_url, settings.upstash_token,
                                          timeout_s=settings.timeout_s)
    elif settings.backend == "postgres":
        primary = PostgresLimiter(pool, timeout_s=settings.timeout_s)
    else:
        raise SettingsError(f"ratelimit.backend: unknown backend {settings.backend!r}")
    # Leases keep the backend off the hot path; the failure policy guards every lease call.
    return LeasingLimiter(ResilientLimiter(primary, settings.failure_policy))
