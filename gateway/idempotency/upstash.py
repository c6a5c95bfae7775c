"""Upstash claims: the Redis claim script over the Upstash REST API."""

from __future__ import annotations

from gateway.idempotency.scripted import ScriptedClaims
from gateway.ratelimit.clients import UpstashScripts


class UpstashClaims(ScriptedClaims):
    name = "upstash"

    @classmethod
    def from_url(cls, url: str, token: str, *, timeout_s: float,
                 prefix: str = "idem") -> UpstashClaims:
        return cls(UpstashScripts.from_url(url, token), timeout_s=timeout_s, prefix=prefix)
