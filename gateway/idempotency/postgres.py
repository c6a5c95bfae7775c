"""PostgreSQL claims: one upsert into `idempotency_keys` (migrations/0003) per claim.

A live conflicting row keeps its holder; an expired one is taken over. The statement
answers the holder either way, so a claim is one round trip. Expired rows are deleted in
the background by an `ExpirySweeper`. The pool belongs to the caller.
"""

from __future__ import annotations

import asyncpg

from gateway.idempotency.base import Claim
from gateway.ratelimit.errors import store_call
from gateway.ratelimit.sweeper import ExpirySweeper

# now() is fixed for the statement, so both CASEs agree on whether the old claim expired.
CLAIM_SQL = """
INSERT INTO idempotency_keys AS k (project_id, client_request_id, gateway_request_id, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (project_id, client_request_id) DO UPDATE SET
    gateway_request_id = CASE WHEN k.expires_at <= now() THEN EXCLUDED.gateway_request_id
                              ELSE k.gateway_request_id END,
    expires_at = CASE WHEN k.expires_at <= now() THEN EXCLUDED.expires_at
                      ELSE k.expires_at END
RETURNING gateway_request_id
"""


class PostgresClaims:
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float,
                 sweep_interval_s: float = 30.0) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self.sweeper = ExpirySweeper(pool, "idempotency_keys", "project_id, client_request_id",
                                     interval_s=sweep_interval_s)

    async def claim(self, project_id: int, client_request_id: str, gateway_request_id: str,
                    ttl_s: float) -> Claim:
        async with store_call(self.name, self._timeout_s):
            holder = await self._pool.fetchval(CLAIM_SQL, project_id, client_request_id,
                                               gateway_request_id, float(ttl_s))
        self.sweeper.poke()
        return Claim(holder == gateway_request_id, holder)

    async def close(self) -> None:
        await self.sweeper.close()
