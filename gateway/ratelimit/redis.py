"""Redis rate limiter (redis-py asyncio): `lua.HIT` via EVALSHA, SCRIPT LOAD on NOSCRIPT."""

from __future__ import annotations

from gateway.ratelimit.clients import RedisScripts
from gateway.ratelimit.scripted import ScriptedLimiter


class RedisLimiter(ScriptedLimiter):
    name = "redis"

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, prefix: str = "rl") -> RedisLimiter:
        return cls(RedisScripts.from_url(url, timeout_s), timeout_s=timeout_s, prefix=prefix)
