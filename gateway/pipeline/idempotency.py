"""Stage 4, idempotency: an `X-Request-Id` is claimed once per project (409 on reuse)."""

from __future__ import annotations

from gateway.errors import Conflict
from gateway.idempotency import ClaimStore
from gateway.pipeline.exchange import Exchange


class IdempotencyGuard:
    def __init__(self, claims: ClaimStore, retention_s: float) -> None:
        self._claims = claims
        self._retention_s = retention_s

    async def admit(self, ex: Exchange) -> None:
        if ex.client_request_id is None or ex.principal is None:
            return
        claim = await self._claims.claim(ex.principal.project.id, ex.client_request_id,
                                         str(ex.request_id), self._retention_s)
        if not claim.claimed:
            raise Conflict(
                f"X-Request-Id {ex.client_request_id!r} was already used for this project",
                code="duplicate_request_id",
                details={"request_id": ex.client_request_id,
                         "first_request_id": claim.first_request_id})

    async def settle(self, ex: Exchange) -> None:
        """Claims are kept for the retention period, whatever the outcome."""
