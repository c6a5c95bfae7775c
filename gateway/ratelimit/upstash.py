"""Upstash rate limiter: the same `lua.HIT` as Redis, sent over the Upstash REST API.

The REST client has no time limit of its own; every call runs under `store_call`'s.
"""

from __future__ import annotations

from gateway.ratelimit.clients import UpstashScripts
from gateway.ratelimit.scripted import ScriptedLimiter


class UpstashLimiter(ScriptedLimiter):
    name = "upstash"

    @classmethod
    def from_url(cls, url: str, token: str, *, timeout_s: float,
                 prefix: str = "rl") -> UpstashLimiter:
        return cls(UpstashScripts.from_url(url, token), timeout_s=timeout_s, prefix=prefix)
