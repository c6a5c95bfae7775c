"""Claims that survive their store: 503 (fail_closed) or per-process claims (fail_open)."""

from __future__ import annotations

from gateway.idempotency.base import Claim, ClaimStore
from gateway.idempotency.memory import MemoryClaims
from gateway.ratelimit.errors import BackendUnavailable
from gateway.ratelimit.policy import FailurePolicy


class ResilientClaims:
    """Wraps `primary`; when it cannot answer, applies `policy` ("fail_closed" or "fail_open").

    Under fail_open the per-process `fallback` claims, and `fallbacks` counts how often.
    """

    def __init__(self, primary: ClaimStore, policy: str,
                 fallback: ClaimStore | None = None) -> None:
        self._primary = primary
        self._fallback = fallback if fallback is not None else MemoryClaims()
        self._policy = FailurePolicy(policy, what="idempotency", code="idempotency_unavailable")

    @property
    def fallbacks(self) -> int:
        return self._policy.fallbacks

    async def claim(self, project_id: int, client_request_id: str, gateway_request_id: str,
                    ttl_s: float) -> Claim:
        try:
            return await self._primary.claim(project_id, client_request_id,
                                             gateway_request_id, ttl_s)
        except BackendUnavailable as exc:
            self._policy.on_unavailable(exc)
        return await self._fallback.claim(project_id, client_request_id, gateway_request_id,
                                          ttl_s)

    async def close(self) -> None:
        try:
            await self._primary.close()
        finally:
            await self._fallback.close()
