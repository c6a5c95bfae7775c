"""The usage ledger writer: rows are queued in memory and copied to PostgreSQL in batches.

`record()` never waits: the request path appends and moves on. A background task flushes a
batch when it is full or when the flush interval passes, with `COPY` (one round trip per
batch). A failed flush keeps its rows and retries with backoff; `close()` flushes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import asyncpg
import structlog

from gateway.domain import UsageRecord
from gateway.settings import LedgerSettings

log = structlog.get_logger(__name__)

COLUMNS = (
    "request_id", "project_id", "api_key_id", "provider", "model", "endpoint", "status",
    "streamed", "input_tokens", "cached_input_tokens", "output_tokens", "usage_source",
    "input_source", "output_source",
    "cost_usd", "priced_by_fallback", "price_model", "overhead_ms", "upstream_ms",
    "error_code", "metadata", "started_at", "finished_at",
    "cache_write_tokens", "requested_model", "credential", "attempts",
)


def as_row(r: UsageRecord) -> tuple[Any, ...]:
    u = r.usage
    return (r.request_id, r.project_id, r.api_key_id, r.provider, r.model, r.endpoint, r.status,
            r.streamed, u.input_tokens, u.cached_input_tokens, u.output_tokens, u.source,
            u.input_source, u.output_source,
            r.cost_usd, r.priced_by_fallback, r.price_model, r.overhead_ms, r.upstream_ms,
            r.error_code, r.metadata, r.started_at, r.finished_at,
            u.cache_write_tokens, r.requested_model, r.credential, r.attempts)


class Ledger:
    def __init__(self, pool: asyncpg.Pool, settings: LedgerSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._pending: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0
        self.failures = 0
        self.last_flush = time.time()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, record: UsageRecord) -> None:
        """Queue one row; never blocks, never raises on the request path."""
        self._pending.append(as_row(record))
        if len(self._pending) >= self._settings.batch_size:
            self._wake.set()
        if len(self._pending) == self._settings.max_pending:
            log.error("ledger_backlog", pending=len(self._pending))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def close(self, deadline_s: float) -> None:
        """Stop the writer and flush everything still queued, retrying for `deadline_s`."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(self._task, deadline_s)
            except TimeoutError:
                log.error("ledger_unflushed_on_close", pending=len(self._pending))

    async def flush(self) -> int:
        """Write queued rows now, batch by batch; answer how many were written."""
        done = 0
        while self._pending:
            batch = [self._pending.popleft()
                     for _ in range(min(self._settings.batch_size, len(self._pending)))]
            try:
                async with self._pool.acquire() as conn:
                    try:
                        await conn.copy_records_to_table("usage_records", records=batch,
                                                         columns=COLUMNS)
                    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
                        await _insert_one_by_one(conn, batch)
            except BaseException:
                self._pending.extendleft(reversed(batch))  # keep order, lose nothing
                raise
            done += len(batch)
            self.written += len(batch)
        self.last_flush = time.time()
        return done

    async def _run(self) -> None:
        backoff = self._settings.flush_interval_s
        while True:
            if not self._closing:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
                backoff = self._settings.flush_interval_s
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.failures += 1
                log.warning("ledger_flush_failed", error=str(exc), pending=len(self._pending))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if self._closing and not self._pending:
                return


_INSERT = (f"INSERT INTO usage_records ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))}) "
           "ON CONFLICT (request_id) DO NOTHING")


async def _insert_one_by_one(conn: asyncpg.Connection, batch: list[tuple[Any, ...]]) -> None:
    """A batch that COPY refused: keep every row that can be kept, skip duplicates, log the rest."""
    for row in batch:
        try:
            await conn.execute(_INSERT, *row)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
            log.error("ledger_row_rejected", request_id=str(row[0]), error=str(exc))
