"""The ledger writer: batches, never blocks, keeps rows through a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import asyncpg
from conftest import with_database

from gateway import db as gwdb
from gateway.domain import Usage, UsageRecord
from gateway.ledger import Ledger
from gateway.settings import DatabaseSettings, LedgerSettings
from gateway.testing.tcp_proxy import TcpProxy


def row(**changes: object) -> UsageRecord:
    now = datetime.now(UTC)
    values = dict(request_id=uuid.uuid4(), project_id=1, api_key_id=1, provider="openai",
                  model="gpt-4o-mini", endpoint="/v1/chat/completions", status=200,
                  streamed=False, usage=Usage(10, 2, 5), cost_usd=Decimal("0.0000042"),
                  priced_by_fallback=False, price_model="gpt-4o-mini", overhead_ms=0.4,
                  upstream_ms=12.5, error_code=None, metadata={"feature": "x"},
                  started_at=now, finished_at=now)
    values.update(changes)
    return UsageRecord(**values)  # type: ignore[arg-type]


async def test_rows_are_batched_and_exact(database_url: str, db: asyncpg.Connection) -> None:
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    ledger = Ledger(pool, LedgerSettings(batch_size=100, flush_interval_s=10))
    await ledger.start()
    rows = [row() for _ in range(250)]
    for r in rows:
        ledger.record(r)  # synchronous: the request path never awaits the ledger
    assert ledger.pending == 250
    await ledger.close(deadline_s=10)
    await pool.close()
    assert ledger.pending == 0 and ledger.written == 250
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 250
    total = await db.fetchval("SELECT sum(cost_usd) FROM usage_records")
    assert total == Decimal("0.0000042") * 250
    stored = await db.fetchrow("SELECT * FROM usage_records WHERE request_id = $1",
                               rows[0].request_id)
    assert stored["metadata"] == {"feature": "x"} and stored["cached_input_tokens"] == 2


async def test_an_outage_loses_nothing_and_duplicates_nothing(
        database_url: str, db: asyncpg.Connection) -> None:
    parts = urlsplit(database_url)
    proxy = TcpProxy(host=parts.hostname or "127.0.0.1", port=parts.port or 5432)
    await proxy.start()
    dsn = with_database(f"postgresql://postgres@127.0.0.1:{proxy.port}/x", parts.path[1:])
    pool = await gwdb.create_pool(dsn, DatabaseSettings(pool_min_size=1, connect_timeout_s=1))
    ledger = Ledger(pool, LedgerSettings(batch_size=50, flush_interval_s=0.02))
    await ledger.start()
    try:
        for _ in range(40):
            ledger.record(row())
        await asyncio.sleep(0.3)
        await proxy.cut()
        for _ in range(60):
            ledger.record(row())
        await asyncio.sleep(0.5)
        assert ledger.failures > 0 and ledger.pending == 60
        await proxy.restore()
        for _ in range(200):  # bounded wait for the retry to land
            if ledger.pending == 0:
                break
            await asyncio.sleep(0.05)
        assert ledger.pending == 0
        assert await db.fetchval("SELECT count(*) FROM usage_records") == 100
    finally:
        await ledger.close(deadline_s=5)
        await pool.close()
        await proxy.cut()


async def test_a_duplicate_row_does_not_poison_its_batch(
        database_url: str, db: asyncpg.Connection) -> None:
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    ledger = Ledger(pool, LedgerSettings(batch_size=10, flush_interval_s=10))
    first = row()
    ledger.record(first)
    await ledger.flush()
    ledger.record(row())
    ledger.record(row(request_id=first.request_id))  # a replayed row
    ledger.record(row())
    await ledger.flush()
    await pool.close()
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 3
