"""Idempotency claims: a client request id (X-Request-Id) is claimed once per project.

Every store answers the same way: the caller owns the id when the stored holder is the
caller's own gateway request id, so a repeated claim by the same request is harmless.
Expired claims can be claimed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Claim:
    claimed: bool  # True: this caller owns the id now
    first_request_id: str  # the gateway request id of whoever claimed it first


class ClaimStore(Protocol):
    async def claim(self, project_id: int, client_request_id: str, gateway_request_id: str,
                    ttl_s: float) -> Claim:
        """Claim the id for `ttl_s` seconds, atomically across processes."""
        ...

    async def close(self) -> None: ...
