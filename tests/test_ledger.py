"""The ledger writer: batches, never blocks, keeps rows through a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from conftest import with_database
from structlog.testing import capture_logs

from gateway import db as gwdb
from gateway.domain import Usage, UsageRecord
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.ledger import COLUMNS, InsertedRow, Ledger, as_row, decode_row, encode_row
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
        for _ in range(200):  # bounded wait for the retry to land (committed, not just taken)
            if ledger.pending == 0 and ledger.written == 100:
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


# -- issue 6: idempotent batches, hooks, write_now, back-pressure, the spill line format --

async def _ledger_pool(database_url: str) -> asyncpg.Pool:
    return await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))


async def test_hooks_see_only_inserted_rows_inside_the_transaction(
        database_url: str, db: asyncpg.Connection) -> None:
    seen: list[InsertedRow] = []
    visible: list[int] = []

    async def hook(conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        assert conn.is_in_transaction()
        seen.extend(rows)
        visible.append(await conn.fetchval(
            "SELECT count(*) FROM usage_records WHERE request_id = ANY($1::uuid[])",
            [r.request_id for r in rows]))

    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(batch_size=10, flush_interval_s=10), hooks=[hook])
    first, second = row(status=429, error_code="rate_limited"), row()
    ledger.record(first)
    await ledger.flush()
    for r in (second, row(request_id=first.request_id), second):  # two replays
        ledger.record(r)
    assert await ledger.flush() == 3
    await pool.close()
    assert [r.request_id for r in seen] == [first.request_id, second.request_id]
    assert visible == [1, 1]  # the hook runs after the insert, before the commit
    got = seen[0]
    assert (got.project_id, got.provider, got.model, got.status, got.error_code) == (
        1, "openai", "gpt-4o-mini", 429, "rate_limited")
    assert (got.input_tokens, got.output_tokens, got.cost_usd) == (10, 5, Decimal("0.0000042"))
    assert got.started_at == first.started_at and got.metadata == {"feature": "x"}
    assert ledger.written == 2 and ledger.duplicates == 2


async def test_a_failing_hook_costs_no_rows(database_url: str, db: asyncpg.Connection) -> None:
    calls: list[int] = []

    async def broken(conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        await conn.execute("SELECT 1/0")

    async def counting(conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        calls.append(len(rows))

    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(flush_interval_s=10), hooks=[broken, counting])
    for _ in range(5):
        ledger.record(row())
    await ledger.flush()
    await pool.close()
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 5
    assert calls == [5]  # the next hook still ran, in the same (still valid) transaction


async def test_a_hook_that_wants_nothing_of_a_batch_is_not_run(
        database_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wants(rows)` False: no call and no savepoint (the tracked-spend hook with a batch of
    proxied rows only); True: called as any hook."""
    calls: list[list[str]] = []

    class Picky:
        @staticmethod
        def wants(rows: Sequence[InsertedRow]) -> bool:
            return any(r.origin == "track" for r in rows)

        async def __call__(self, conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
            calls.append([r.origin for r in rows])

    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(flush_interval_s=10), hooks=[Picky()])
    transactions: list[bool] = []  # each one started: whether it is a savepoint
    start = asyncpg.transaction.Transaction.start

    async def counted(self: asyncpg.transaction.Transaction) -> None:
        transactions.append(self._connection.is_in_transaction())
        await start(self)

    monkeypatch.setattr(asyncpg.transaction.Transaction, "start", counted)
    for _ in range(3):
        ledger.record(row())
    await ledger.flush()
    assert calls == [] and transactions == [False]  # the batch's own, no savepoint
    ledger.record(row(origin="track"))
    ledger.record(row())
    await ledger.flush()
    await pool.close()
    assert calls == [["track", "proxy"]] and transactions == [False, False, True]
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 5


def test_tracked_spend_wants_only_batches_with_tracked_costs() -> None:
    from gateway.budgets import TrackedSpendHook
    from gateway.ledger import _inserted

    proxied = _inserted(as_row(row()))
    tracked = _inserted(as_row(row(origin="track")))
    free = _inserted(as_row(row(origin="track", cost_usd=Decimal(0))))
    assert not TrackedSpendHook.wants([proxied, free])
    assert TrackedSpendHook.wants([proxied, tracked])


async def test_copy_rows_are_encoded_a_few_at_a_time() -> None:
    """Between every `PACE_ROWS` rows the event loop turns: a call due meanwhile runs then,
    not after the whole batch."""
    from gateway.ledger import PACE_ROWS, _paced

    taken: list[int] = []
    turns: list[int] = []

    async def other_work() -> None:
        while True:
            turns.append(len(taken))
            await asyncio.sleep(0)

    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    rows = [(n,) for n in range(3 * PACE_ROWS + 1)]
    async for r in _paced(rows):
        taken.append(r[0])
    task.cancel()
    assert taken == list(range(len(rows)))
    assert {PACE_ROWS, 2 * PACE_ROWS, 3 * PACE_ROWS} <= set(turns)


async def test_a_batch_stores_exactly_what_a_single_insert_stores(
        database_url: str, db: asyncpg.Connection) -> None:
    """A batch goes in by COPY, a single row as an INSERT's parameters: every column of the
    two must come out the same."""
    moment = datetime(2025, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)
    values = dict(cost_usd=Decimal("0.000000000123456789012345678901"), started_at=moment,
                  finished_at=moment.astimezone(timezone(timedelta(hours=5, minutes=30))),
                  metadata={"feature": "ch\u00e4t \U0001f600 \"q\" \\ \n\t", "n": 3,
                            "ratio": 0.1, "big": 2**62, "nested": {"a": [1, None, True]}},
                  upstream_ms=None, overhead_ms=0.30000000000000004,
                  usage=Usage(7, 1, 2, "counted", "estimated", 3), model="m\u00f6del\\x",
                  attempts=[{"provider": "openai", "status": 500, "ms": 1.5}],
                  requested_model=None, credential="team-a", route_reason="cheapest")
    single, batched = row(**values), row(**values)
    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(batch_size=10, flush_interval_s=10))
    assert await ledger.write_now(single)
    ledger.record(batched)
    assert await ledger.flush() == 1
    await pool.close()
    columns = ", ".join(c for c in COLUMNS if c != "request_id")
    one, other = [await db.fetchrow(f"SELECT {columns} FROM usage_records WHERE request_id = $1",
                                    r.request_id) for r in (single, batched)]
    assert dict(one) == dict(other)
    assert other["metadata"] == values["metadata"] and other["cost_usd"] == values["cost_usd"]
    assert other["finished_at"] == values["finished_at"]


async def test_a_request_id_queued_twice_in_one_batch_is_stored_as_first_queued(
        database_url: str, db: asyncpg.Connection) -> None:
    seen: list[InsertedRow] = []

    async def hook(conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        seen.extend(rows)

    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(batch_size=10, flush_interval_s=10), hooks=[hook])
    first = row(cost_usd=Decimal("0.5"))
    ledger.record(first)
    ledger.record(row(request_id=first.request_id, cost_usd=Decimal("7")))
    assert await ledger.flush() == 2
    await pool.close()
    assert await db.fetchval("SELECT cost_usd FROM usage_records") == Decimal("0.5")
    assert [(r.request_id, r.cost_usd) for r in seen] == [(first.request_id, Decimal("0.5"))]
    assert ledger.written == 1 and ledger.duplicates == 1


async def test_write_now_answers_whether_the_row_is_new(
        database_url: str, db: asyncpg.Connection) -> None:
    seen: list[uuid.UUID] = []

    async def hook(conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        seen.extend(r.request_id for r in rows)

    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(), hooks=[hook])
    tracked = row(cost_usd=Decimal("1.000000000000000000000001"))
    assert await ledger.write_now(tracked) is True
    assert await ledger.write_now(tracked) is False
    with pytest.raises(BadRequest):
        await ledger.write_now(row(usage=Usage(2**40, 0, 0)))
    await pool.close()
    assert seen == [tracked.request_id]
    assert await db.fetchval("SELECT cost_usd FROM usage_records") == tracked.cost_usd
    assert await db.fetchval("SELECT cost_usd FROM usage_hourly") == tracked.cost_usd


async def test_invalid_rows_become_dead_letters_and_the_rest_of_the_batch_is_kept(
        database_url: str, db: asyncpg.Connection) -> None:
    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(batch_size=10, flush_interval_s=10))
    good = [row() for _ in range(4)]
    too_big = row(usage=Usage(2**40, 0, 0))  # COPY refuses it on the client side
    bad_source = row(usage=Usage(1, 0, 1, input_source="guessed"))  # a CHECK refuses it
    for r in (good[0], too_big, good[1], bad_source, good[2], good[3]):
        ledger.record(r)
    with capture_logs() as logs:
        assert await ledger.flush() == 6
    await pool.close()
    stored = {r["request_id"] for r in await db.fetch("SELECT request_id FROM usage_records")}
    assert stored == {r.request_id for r in good}
    assert ledger.rejected == 2 and ledger.written == 4
    rejected = [e for e in logs if e["event"] == "ledger_row_dead_lettered"]
    assert {e["request_id"] for e in rejected} == {str(too_big.request_id),
                                                   str(bad_source.request_id)}
    letters = await db.fetch("SELECT request_id, row_json, error FROM ledger_dead_letters")
    assert {r["request_id"] for r in letters} == {too_big.request_id, bad_source.request_id}
    assert all(r["row_json"] and r["error"] for r in letters)
    assert ledger.dead_letters_waiting == 2


async def test_check_capacity_refuses_at_the_bound(database_url: str) -> None:
    pool = await _ledger_pool(database_url)
    ledger = Ledger(pool, LedgerSettings(max_pending=3, flush_interval_s=10))
    for _ in range(2):
        ledger.record(row())
    ledger.check_capacity()
    ledger.record(row())
    with pytest.raises(ServiceUnavailable) as caught:
        ledger.check_capacity()
    assert caught.value.code == "ledger_backlog" and caught.value.status == 503
    assert int(caught.value.headers["Retry-After"]) >= 1
    ledger.record(row())  # record() itself never refuses nor drops
    assert ledger.pending == 4
    await ledger.flush()
    ledger.check_capacity()
    await pool.close()


def test_spill_lines_round_trip_exactly() -> None:
    moment = datetime(2025, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)
    record = row(cost_usd=Decimal("0.000000000123456789012345678901"), started_at=moment,
                 finished_at=moment.astimezone(timezone(timedelta(hours=5, minutes=30))),
                 metadata={"feature": "chat", "n": 3, "ratio": 0.1, "nested": {"a": [1, None]}},
                 upstream_ms=None, overhead_ms=0.30000000000000004, usage=Usage(7, 1, 2, "counted",
                                                                                 "estimated", 3),
                 attempts=[{"provider": "openai", "status": 500, "ms": 1.5}])
    original = as_row(record)
    line = encode_row(original)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = decode_row(line)
    assert decoded == original
    assert [type(v) for v in decoded] == [type(v) for v in original]
    assert decoded[COLUMNS.index("finished_at")].utcoffset() == timedelta(hours=5, minutes=30)


def test_spill_settings() -> None:
    settings = LedgerSettings()
    assert settings.spill_path(Path("/var/lib/gw")) == Path("/var/lib/gw/spill")
    assert LedgerSettings(spill_dir=Path("/x")).spill_path(Path("/var/lib/gw")) == Path("/x")
    assert settings.spill_max_bytes > 0 and settings.flush_timeout_s > 0
