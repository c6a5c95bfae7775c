"""Readiness: is this process able to serve (started, not draining, PostgreSQL reachable),
and is anything degraded (usage rows waiting in the ledger's dead letters)?"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.db import DatabaseStart, bounded_connection
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
    database_start: DatabaseStart | None = None  # not `ready`: not migrated or never reached

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks). Dead letters make the ledger `degraded`: the gateway still serves,
        but rows wait in ledger_dead_letters for an operator's replay."""
        database = await self._database()
        waiting = self.ledger.dead_letters_waiting
        checks: dict[str, Any] = {
            "database": database,
            "ledger": {"ok": True, "status": "degraded" if waiting else "ok",
                       "pending": self.ledger.pending, "written": self.ledger.written,
                       "failed_flushes": self.ledger.failures, "dead_letters": waiting,
                       "spill_bytes": self.ledger.spill_bytes},
            "key_invalidation": {"ok": True, "listening": self.keys.listening},
            "tokens": {"ok": True, "backend": self.tokens.backend, "device": self.tokens.device,
                       "encodings": list(self.tokens.counter.encodings)},
            "draining": self.draining,
        }
        return database["ok"] and not self.draining, checks

    async def _database(self) -> dict[str, Any]:
        start = self.database_start
        if start is not None and not start.ready.is_set():
            return {"ok": False, "error": f"not started yet ({start.attempts} attempts, retrying)"
                                          f": {start.error or 'in progress'}"}
        started = time.perf_counter()
        try:
            async with bounded_connection(self.pool, DB_CHECK_TIMEOUT_S) as conn:
                self.ledger.dead_letters_waiting = await conn.fetchval(
                    "SELECT count(*) FROM ledger_dead_letters WHERE replayed_at IS NULL")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}".strip(": ")}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
