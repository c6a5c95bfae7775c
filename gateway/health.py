"""Readiness: is this process able to serve (started, not draining, PostgreSQL reachable)?"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.keystore import KeyStore
from gateway.ledger import Ledger
from gateway.tokens.service import TokenService

DB_CHECK_TIMEOUT_S = 1.0


@dataclass
class Readiness:
    pool: asyncpg.Pool
    ledger: Ledger
    keys: KeyStore
    tokens: TokenService
    draining: bool = False

    async def check(self) -> tuple[bool, dict[str, Any]]:
        database = await self._database()
        checks: dict[str, Any] = {
            "database": database,
            "ledger": {"ok": True, "pending": self.ledger.pending,
                       "written": self.ledger.written, "failed_flushes": self.ledger.failures},
            "key_invalidation": {"ok": True, "listening": self.keys.listening},
            "tokens": {"ok": True, "backend": self.tokens.backend, "device": self.tokens.device,
                       "encodings": list(self.tokens.counter.encodings)},
            "draining": self.draining,
        }
        return database["ok"] and not self.draining, checks

    async def _database(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT_S):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}".strip(": ")}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
