"""Claims on any Redis-compatible store: SET NX PX, or GET the holder, in one Lua call."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gateway.idempotency import lua
from gateway.idempotency.base import Claim
from gateway.ratelimit.errors import store_call

if TYPE_CHECKING:  # the clients import redis and upstash: only when a backend needs them
    from gateway.ratelimit.clients import ScriptRunner


class ScriptedClaims:
    name = "scripted"

    def __init__(self, scripts: ScriptRunner, *, timeout_s: float, prefix: str = "idem") -> None:
        self._scripts = scripts
        self._timeout_s = timeout_s
        self._prefix = prefix

    async def claim(self, project_id: int, client_request_id: str, gateway_request_id: str,
                    ttl_s: float) -> Claim:
        key = f"{self._prefix}:{project_id}:{client_request_id}"
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        async with store_call(self.name, self._timeout_s):
            holder = await self._scripts.run(lua.CLAIM, [key], [gateway_request_id, ttl_ms])
        if isinstance(holder, bytes):
            holder = holder.decode()
        return Claim(holder == gateway_request_id, str(holder))

    async def close(self) -> None:
        await self._scripts.close()
