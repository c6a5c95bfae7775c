"""Redis claims (redis-py asyncio)."""

from __future__ import annotations

from gateway.idempotency.scripted import ScriptedClaims
from gateway.ratelimit.clients import RedisScripts


class RedisClaims(ScriptedClaims):
    name = "redis"

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, prefix: str = "idem") -> RedisClaims:
        return cls(RedisScripts.from_url(url, timeout_s), timeout_s=timeout_s, prefix=prefix)
