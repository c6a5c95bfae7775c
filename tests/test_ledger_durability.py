"""The ledger loses nothing and counts nothing twice: rollups, spill files, replays, SIGTERM."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import ROOT, FakeUpstream, GatewayFactory, chat_body, create_project, with_database
from structlog.testing import capture_logs
from test_ledger import row
from test_serve import start_gateway_process, wait_gateway_exit

from gateway import db as gwdb
from gateway import migrate, projects
from gateway.domain import Usage
from gateway.errors import ServiceUnavailable
from gateway.keys import LEDGER
from gateway.ledger import (
    COLUMNS,
    SPILL_GLOB,
    InsertedRow,
    Ledger,
    SpillFiles,
    as_row,
    decode_row,
    encode_row,
)
from gateway.middlewares import REQUEST_ID_HEADER
from gateway.settings import DatabaseSettings, LedgerSettings
from gateway.testing.tcp_proxy import TcpProxy

ROLLUP_MIGRATION = "0007_ledger_rollups.sql"
RAW_BY_HOUR = """
    SELECT date_trunc('hour', started_at, 'UTC') AS hour, project_id, provider, model,
           count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors,
           sum(input_tokens)::bigint AS input_tokens,
           sum(cached_input_tokens)::bigint AS cached_input_tokens,
           sum(cache_write_tokens)::bigint AS cache_write_tokens,
           sum(output_tokens)::bigint AS output_tokens, sum(cost_usd) AS cost_usd
    FROM usage_records GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""
ROLLUPS = """
    SELECT hour, project_id, provider, model, requests, errors, input_tokens,
           cached_input_tokens, cache_write_tokens, output_tokens, cost_usd
    FROM usage_hourly ORDER BY 1, 2, 3, 4"""


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Bounded wait for a condition the ledger's background task will make true."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def assert_rollups_exact(db: asyncpg.Connection) -> None:
    raw = [tuple(r) for r in await db.fetch(RAW_BY_HOUR)]
    rolled = [tuple(r) for r in await db.fetch(ROLLUPS)]
    assert raw == rolled and raw
    total = await db.fetchval("SELECT sum(cost_usd) FROM usage_records")
    assert await db.fetchval("SELECT sum(cost_usd) FROM usage_hourly") == total


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(SPILL_GLOB))


def spill_lines(directory: Path) -> list[bytes]:
    """The lines as a reader of the files sees them: an open journal segment is NUL-padded
    to its reserved size, and readers stop at the padding."""
    return [line for path in spill_files(directory)
            for line in path.read_bytes().rstrip(b"\0").splitlines(keepends=True)]


async def test_rollups_equal_raw_sums_with_duplicates_and_two_writers(
        database_url: str, db: asyncpg.Connection) -> None:
    team = await db.fetchval("INSERT INTO teams (name) VALUES ('rollup-team') RETURNING id")
    in_team = await db.fetchval(
        "INSERT INTO projects (name, team_id) VALUES ('in-team', $1) RETURNING id", team)
    alone = await db.fetchval("INSERT INTO projects (name) VALUES ('alone') RETURNING id")
    # A session time zone half an hour off UTC: buckets must still be UTC hours.
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4,
                                     init=gwdb.init_connection,
                                     server_settings={"TimeZone": "Asia/Kolkata"})
    assert pool is not None
    settings = LedgerSettings(batch_size=37, flush_interval_s=0.005)
    first, second = Ledger(pool, settings), Ledger(pool, settings)
    await first.start()
    await second.start()
    rng = random.Random(6)
    base = datetime(2025, 3, 31, 21, 0, tzinfo=UTC)
    rows = [row(project_id=rng.choice((in_team, alone, 999)),
                provider=(provider := rng.choice(("openai", "anthropic"))),
                model=f"{provider}-m{rng.randint(1, 3)}",
                status=rng.choice((200, 200, 200, 400, 429, 500, 502)),
                usage=Usage(rng.randint(0, 10**6), rng.randint(0, 500), rng.randint(0, 10**5),
                            cache_write_tokens=rng.randint(0, 300)),
                cost_usd=Decimal(rng.randint(0, 10**12)) / Decimal(10**15),
                started_at=base + timedelta(seconds=rng.randint(0, 4 * 3600 - 1)))
            for _ in range(3000)]
    for i, r in enumerate(rows):
        (first if i % 2 else second).record(r)
        if i % 7 == 0:  # the same row through the other writer: a replay racing the original
            (second if i % 2 else first).record(r)
        if i % 100 == 0:
            await asyncio.sleep(0.002)  # let both writers flush concurrently
    for r in rows[:200]:  # and again, long after
        first.record(r)
    await first.close(deadline_s=20)
    await second.close(deadline_s=20)
    await pool.close()
    assert first.written + second.written == 3000
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 3000
    await assert_rollups_exact(db)
    assert await db.fetchval("SELECT sum(cost_usd) FROM usage_hourly") == sum(
        (r.cost_usd for r in rows), Decimal(0))
    teams = dict(await db.fetch("SELECT DISTINCT project_id, team_id FROM usage_hourly"))
    assert teams == {in_team: team, alone: None, 999: None}
    hours = {r["hour"] for r in await db.fetch("SELECT hour FROM usage_hourly")}
    assert all(h.minute == 0 and h.second == 0 and h.utcoffset() == timedelta(0)
               for h in hours) and len(hours) == 4


async def test_migration_backfills_rollups_from_existing_rows(
        pg_server_dsn: str, tmp_path: Path) -> None:
    """0007 on a database that already has usage rows: the rollups start out exact."""
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted((ROOT / "migrations").glob("*.sql")):
        if path.name < "0007":
            shutil.copy(path, earlier / path.name)
    name = f"gw_backfill_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(with_database(pg_server_dsn, name))
        await gwdb.init_connection(conn)
        try:
            await migrate.migrate(conn, earlier)
            rows = [as_row(row(cost_usd=Decimal(i) / 1000, project_id=1 + i % 3,
                               started_at=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=i)))
                    for i in range(500)]
            before = COLUMNS.index("origin")  # columns of later migrations are left out
            await conn.copy_records_to_table("usage_records",
                                             records=[r[:before] for r in rows],
                                             columns=COLUMNS[:before])
            shutil.copy(ROOT / "migrations" / ROLLUP_MIGRATION, earlier / ROLLUP_MIGRATION)
            assert await migrate.migrate(conn, earlier) == [ROLLUP_MIGRATION]
            await assert_rollups_exact(conn)
            await conn.execute("TRUNCATE usage_records")
            assert await conn.fetchval("SELECT count(*) FROM usage_hourly") == 0
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_an_outage_mid_stream_spills_fsynced_lines_and_replays_each_row_once(
        pg_proxy: tuple[TcpProxy, str], db: asyncpg.Connection, tmp_path: Path) -> None:
    proxy, dsn = pg_proxy
    pool = await gwdb.create_pool(dsn, DatabaseSettings(pool_min_size=1, connect_timeout_s=1))
    ledger = Ledger(pool, LedgerSettings(batch_size=20, flush_interval_s=0.01),
                    spill_dir=tmp_path)
    await ledger.start()
    sent: list[uuid.UUID] = []

    async def steady(count: int) -> None:
        for _ in range(count):
            r = row()
            sent.append(r.request_id)
            ledger.record(r)
            await asyncio.sleep(0.004)

    producer = asyncio.create_task(steady(600))
    try:
        await until(lambda: len(sent) > 100)
        await proxy.cut()
        await until(lambda: ledger.spilled >= 100)
        # On disk, whole lines a fresh reader can decode: written and fsync'd per batch.
        lines = spill_lines(tmp_path)
        assert len(lines) >= 100 and all(line.endswith(b"\n") for line in lines)
        assert {decode_row(line)[0] for line in lines} <= set(sent)
        assert ledger.pending < 100  # the queue went to disk, not to memory
        await asyncio.sleep(0.3)
        await proxy.restore()
        await producer
        await until(lambda: ledger.pending == 0 and ledger.spill_bytes == 0)
    finally:
        producer.cancel()
        await ledger.close(deadline_s=5)
        await pool.close()
    assert ledger.failures > 0 and ledger.replayed >= ledger.spilled > 0
    stored = [r["request_id"] for r in await db.fetch("SELECT request_id FROM usage_records")]
    assert len(stored) == len(set(stored)) == 600 and set(stored) == set(sent)
    assert not spill_files(tmp_path)  # emptied, then removed at close
    await assert_rollups_exact(db)


async def test_a_spill_file_left_by_a_crashed_process_is_replayed(
        database_url: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    rows = [row(cost_usd=Decimal(i) / Decimal(10**9), metadata={"i": i}) for i in range(120)]
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    committed = Ledger(pool, LedgerSettings(flush_interval_s=10))
    for r in rows[:30]:  # committed before the "crash", never truncated from the file
        committed.record(r)
    await committed.flush()
    orphan = tmp_path / "ledger-00000000000000000001-4242-0badf00d.jsonl"
    orphan.write_bytes(b"".join(encode_row(as_row(r)) for r in rows)
                       + b"not json\n" + b'{"request_id": "cut sh')
    # A file that a live ledger holds is left alone, even though nothing is replaying it.
    live = SpillFiles(tmp_path, 10**6)
    held = row()
    assert live.append([as_row(held)], False)
    ledger = Ledger(pool, LedgerSettings(flush_interval_s=0.01), spill_dir=tmp_path)
    with capture_logs() as logs:
        await ledger.start()
        await until(lambda: not orphan.exists())
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 120
    by_id = {r["request_id"]: r for r in await db.fetch("SELECT * FROM usage_records")}
    for r in rows:
        stored = by_id[r.request_id]
        assert stored["cost_usd"] == r.cost_usd and stored["started_at"] == r.started_at
        assert stored["metadata"] == r.metadata
    assert sorted(e["offset"] for e in logs if e["event"] == "ledger_spill_line_unreadable")
    assert held.request_id not in by_id
    live.close()  # its process "dies": the next ledger to start takes the file over
    later = Ledger(pool, LedgerSettings(flush_interval_s=0.01), spill_dir=tmp_path)
    await later.start()
    await until(lambda: later.replayed == 1 and later.spill_bytes == 0)
    await asyncio.gather(ledger.close(deadline_s=5), later.close(deadline_s=5))
    await pool.close()
    assert await db.fetchval("SELECT count(*) FROM usage_records WHERE request_id = $1",
                             held.request_id) == 1
    assert not spill_files(tmp_path)
    await assert_rollups_exact(db)


async def test_backpressure_when_memory_and_spill_are_full(
        pg_proxy: tuple[TcpProxy, str], db: asyncpg.Connection, tmp_path: Path) -> None:
    proxy, dsn = pg_proxy
    pool = await gwdb.create_pool(dsn, DatabaseSettings(pool_min_size=1, connect_timeout_s=1))
    line = len(encode_row(as_row(row())))
    settings = LedgerSettings(batch_size=10, flush_interval_s=0.01, max_pending=50,
                              spill_max_bytes=25 * line)  # room for two batches of ten
    ledger = Ledger(pool, settings, spill_dir=tmp_path)
    await ledger.start()
    await proxy.cut()
    for _ in range(100):
        ledger.record(row())
    try:
        await until(lambda: ledger.spilled == 20 and ledger.failures > 0)
        assert ledger.pending == 80
        with pytest.raises(ServiceUnavailable) as caught:
            ledger.check_capacity()
        assert caught.value.code == "ledger_backlog" and caught.value.headers["Retry-After"]
        await proxy.restore()
        await until(lambda: ledger.pending == 0 and ledger.spill_bytes == 0)
        ledger.check_capacity()
    finally:
        await ledger.close(deadline_s=5)
        await pool.close()
    assert await db.fetchval("SELECT count(DISTINCT request_id) FROM usage_records") == 100


async def test_close_during_an_outage_spills_and_the_next_start_replays(
        pg_proxy: tuple[TcpProxy, str], database_url: str, db: asyncpg.Connection,
        tmp_path: Path) -> None:
    proxy, dsn = pg_proxy
    pool = await gwdb.create_pool(dsn, DatabaseSettings(pool_min_size=1, connect_timeout_s=1))
    settings = LedgerSettings(flush_interval_s=10, spill_max_bytes=100)  # tiny: close ignores it
    ledger = Ledger(pool, settings, spill_dir=tmp_path)
    await ledger.start()
    rows = [row() for _ in range(75)]
    await proxy.cut()
    for r in rows:
        ledger.record(r)
    await ledger.close(deadline_s=5)
    pool.terminate()
    assert ledger.pending == 0 and ledger.spilled == 75
    assert sorted(decode_row(line)[0] for line in spill_lines(tmp_path)) == sorted(
        r.request_id for r in rows)
    hooked: list[uuid.UUID] = []

    async def hook(conn: asyncpg.Connection, inserted: Sequence[InsertedRow]) -> None:
        hooked.extend(r.request_id for r in inserted)

    direct = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    after = Ledger(direct, LedgerSettings(flush_interval_s=0.01), hooks=[hook],
                   spill_dir=tmp_path)
    await after.start()
    await until(lambda: after.spill_bytes == 0)
    await after.close(deadline_s=5)
    await direct.close()
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 75
    assert sorted(hooked) == sorted(r.request_id for r in rows)  # replayed rows reach hooks
    assert not spill_files(tmp_path)


async def test_gateway_under_load_through_a_postgres_outage_keeps_every_row_once(
        make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str], db: asyncpg.Connection,
        tmp_path: Path) -> None:
    proxy, dsn = pg_proxy
    client = await make_gateway(database={"url": dsn, "connect_timeout_s": 1},
                                ledger={"flush_interval_s": 0.02, "spill_dir": str(tmp_path)})
    _, key = await create_project(client, plan="enterprise")  # no rate limits
    auth = {"Authorization": f"Bearer {key}"}
    answered: dict[str, int] = {}

    async def one() -> None:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=auth)
        await resp.read()
        answered[resp.headers[REQUEST_ID_HEADER]] = resp.status

    async def load(total: int, per_tick: int) -> None:
        tasks = []
        for _ in range(0, total, per_tick):
            tasks += [asyncio.create_task(one()) for _ in range(per_tick)]
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    ledger = client.app[LEDGER]
    traffic = asyncio.create_task(load(300, 5))  # 300 requests over about 3 s
    await asyncio.sleep(0.8)
    await proxy.cut()
    await until(lambda: ledger.spilled > 0)
    await asyncio.sleep(0.8)
    await proxy.restore()
    await traffic
    await until(lambda: ledger.pending == 0 and ledger.spill_bytes == 0)
    assert len(answered) == 300 and ledger.failures > 0 and ledger.spilled > 0
    assert set(answered.values()) == {200}  # the gateway kept serving through the outage
    rows = await db.fetch("SELECT request_id, status FROM usage_records")
    assert {str(r["request_id"]): r["status"] for r in rows} == answered
    assert len(rows) == 300
    await assert_rollups_exact(db)


async def _send(http: aiohttp.ClientSession, url: str, key: str, answered: dict[str, int],
                failed: list[str]) -> None:
    try:
        async with http.post(f"{url}/v1/chat/completions", json=chat_body(),
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.read()
            answered[resp.headers[REQUEST_ID_HEADER]] = resp.status
    except aiohttp.ClientError as exc:  # refused once the gateway stopped listening
        failed.append(type(exc).__name__)


async def _load(url: str, key: str, total: int, concurrency: int, answered: dict[str, int],
                failed: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                await _send(http, url, key, answered, failed)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


@pytest.fixture
async def served_key(db: asyncpg.Connection) -> str:
    project = await projects.create_project(db, {"name": "sigterm", "plan": "enterprise"})
    _, key = await projects.issue_key(db, project["id"])
    return str(key)


async def test_sigterm_during_load_loses_nothing(
        database_url: str, fake_upstream: FakeUpstream, db: asyncpg.Connection,
        served_key: str, tmp_path: Path) -> None:
    env = {"GATEWAY_DATABASE_URL": database_url, "OPENAI_BASE_URL": fake_upstream.url,
           "GATEWAY_LEDGER_FLUSH_INTERVAL_S": "5",  # rows sit in memory until SIGTERM
           "GATEWAY_LEDGER_SPILL_DIR": str(tmp_path), "GATEWAY_LOGGING_LEVEL": "info"}
    served = await start_gateway_process(env)
    answered: dict[str, int] = {}
    failed: list[str] = []
    try:
        fake_upstream.script(*({"delay_ms": 20} for _ in range(400)))
        load = asyncio.create_task(_load(served.url, served_key, 400, 16, answered, failed))
        await until(lambda: len(answered) >= 100)
        served.process.send_signal(signal.SIGTERM)
        await load
        assert await wait_gateway_exit(served) == 0
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()
    rows = await db.fetch("SELECT request_id, status FROM usage_records")
    stored = {str(r["request_id"]): r["status"] for r in rows}
    assert len(answered) >= 100 and sum(s == 200 for s in answered.values()) >= 100
    assert {k: stored.get(k) for k in answered} == answered  # every answer has its row
    assert len(stored) - len(answered) <= len(failed)  # at most: answered, then cut off
    assert not spill_files(tmp_path)  # PostgreSQL was up: nothing spilled


async def test_sigterm_while_postgres_is_down_spills_and_the_next_start_replays(
        database_url: str, pg_proxy: tuple[TcpProxy, str], fake_upstream: FakeUpstream,
        db: asyncpg.Connection, served_key: str, tmp_path: Path) -> None:
    proxy, dsn = pg_proxy
    env = {"GATEWAY_DATABASE_URL": dsn, "OPENAI_BASE_URL": fake_upstream.url,
           "GATEWAY_DATABASE_MIGRATE_ON_START": "false",
           "GATEWAY_DATABASE_CONNECT_TIMEOUT_S": "1", "GATEWAY_LEDGER_FLUSH_INTERVAL_S": "5",
           "GATEWAY_LEDGER_SPILL_DIR": str(tmp_path), "GATEWAY_LOGGING_LEVEL": "info"}
    served = await start_gateway_process(env)
    before: dict[str, int] = {}
    during: dict[str, int] = {}
    failed: list[str] = []
    try:
        await _load(served.url, served_key, 20, 4, before, failed)  # keys now cached
        await proxy.cut()
        await _load(served.url, served_key, 40, 4, during, failed)
        served.process.send_signal(signal.SIGTERM)
        assert await wait_gateway_exit(served) == 0
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()
    assert len(before) == 20 and len(during) == 40 and not failed
    answered = before | during
    spilled = {str(decode_row(line)[0]) for line in spill_lines(tmp_path)}
    assert set(during) <= spilled <= set(answered)  # what PostgreSQL missed is on disk
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    ledger = Ledger(pool, LedgerSettings(flush_interval_s=0.01), spill_dir=tmp_path)
    await ledger.start()
    await until(lambda: ledger.spill_bytes == 0)
    await ledger.close(deadline_s=5)
    await pool.close()
    rows = await db.fetch("SELECT request_id, status FROM usage_records")
    assert {str(r["request_id"]): r["status"] for r in rows} == answered

