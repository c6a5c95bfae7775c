"""Ledger write throughput: usage rows per second into PostgreSQL, rollup trigger included.

Each scenario drains a queue of N realistic rows (20 projects, 2 providers x 3 models, spread
over the last hours) through `gateway.ledger.Ledger`, as fast as PostgreSQL takes them:

* ledger: the real path (COPY into a temporary table, INSERT ... ON CONFLICT DO NOTHING,
  the statement-level triggers that keep the rollup tables exact);
* ledger, triggers off: the same with the rollup triggers disabled (what the rollups cost);
* ledger, replayed rows: the same N rows again, every one a duplicate (a spill replay);
* raw COPY: copy_records_to_table straight into usage_records, triggers off (the floor);
* 2 writers: two ledgers at once on the same buckets (two gateway processes);
* spill: rows appended to a spill file (fsync per batch), then read back and decoded.

`--preload M` first loads M synthetic rows server-side (through the trigger) and measures
the ledger again on top of them, with one raw-row query analytics needs (one project's
month grouped by a metadata key) timed at that size.

    .venv/bin/python bench/ledger.py [--rows 100000] [--rounds 3] [--preload 10000000]

Needs a PostgreSQL server on which the --database-url role may CREATE DATABASE (default
postgresql://postgres@127.0.0.1:5432/test); a fresh database is created and dropped. JSON
results go to bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from gateway import db as gwdb  # noqa: E402
from gateway import migrate  # noqa: E402
from gateway.domain import Usage, UsageRecord  # noqa: E402
from gateway.ledger import Ledger, SpillFiles, as_row  # noqa: E402
from gateway.settings import DatabaseSettings, LedgerSettings  # noqa: E402

PROJECTS = 20
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("openai", "o3"),
          ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-haiku-4-5"),
          ("anthropic", "claude-opus-4-1"))
FEATURES = ("chat", "search", "summarize", "agent", "autocomplete")


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def make_rows(count: int, seed: int) -> list[UsageRecord]:
    now = dt.datetime.now(dt.UTC)
    prefix = (seed & 0xFFFF_FFFF) << 96
    rows = []
    for i in range(count):
        provider, model = MODELS[i % len(MODELS)]
        started = now - dt.timedelta(seconds=(i * 7) % (6 * 3600))
        rows.append(UsageRecord(
            request_id=uuid.UUID(int=prefix | (i + 1)), project_id=1 + i % PROJECTS,
            api_key_id=1 + i % PROJECTS, provider=provider, model=model,
            endpoint="/v1/chat/completions", status=200 if i % 50 else 429, streamed=i % 3 == 0,
            usage=Usage(300 + i % 700, i % 100, 50 + i % 400), cost_usd=Decimal(i % 9973) / 10**7,
            priced_by_fallback=False, price_model=model, overhead_ms=0.41, upstream_ms=812.5,
            error_code=None if i % 50 else "rate_limited",
            metadata={"feature": FEATURES[i % len(FEATURES)], "user_id": f"u{i % 1000}"},
            started_at=started, finished_at=started + dt.timedelta(milliseconds=813)))
    return rows


async def drain(pool: asyncpg.Pool, rows: list[UsageRecord], writers: int = 1) -> float:
    """Seconds for `writers` ledgers to write `rows` (split between them) from a full queue."""
    settings = LedgerSettings(batch_size=500, flush_interval_s=0.005, max_pending=10**9)
    ledgers = [Ledger(pool, settings) for _ in range(writers)]
    for i, r in enumerate(rows):
        ledgers[i % writers].record(r)
    started = time.perf_counter()
    await asyncio.gather(*(ledger.flush() for ledger in ledgers))
    return time.perf_counter() - started


async def raw_copy(pool: asyncpg.Pool, rows: list[UsageRecord]) -> float:
    from gateway.ledger import COLUMNS

    records = [as_row(r) for r in rows]
    started = time.perf_counter()
    async with pool.acquire() as conn:
        for i in range(0, len(records), 500):
            await conn.copy_records_to_table("usage_records", records=records[i:i + 500],
                                             columns=COLUMNS)
    return time.perf_counter() - started


def spill_round_trip(rows: list[UsageRecord]) -> tuple[float, float, int]:
    records = [as_row(r) for r in rows]
    with tempfile.TemporaryDirectory(prefix="ledger-bench-spill-") as tmp:
        spill = SpillFiles(Path(tmp), 1 << 40)
        started = time.perf_counter()
        for i in range(0, len(records), 500):
            spill.append(records[i:i + 500], False)
        written = time.perf_counter() - started
        size = spill.backlog
        [source] = spill.sources()
        started = time.perf_counter()
        read = 0
        while True:
            batch, end, _ = spill.read(source, 500)
            if end == source.replayed:
                break
            read += len(batch)
            source.replayed = end
        assert read == len(records)
        spill.close()
        return written, time.perf_counter() - started, size


async def preload(conn: asyncpg.Connection, count: int, chunk: int = 1_000_000) -> float:
    """Synthetic rows over the last 90 days, generated server-side, through the trigger."""
    started = time.perf_counter()
    for offset in range(0, count, chunk):
        n = min(chunk, count - offset)
        await conn.execute(f"""
            INSERT INTO usage_records (request_id, project_id, api_key_id, provider, model,
                endpoint, status, streamed, input_tokens, cached_input_tokens, output_tokens,
                usage_source, cost_usd, priced_by_fallback, price_model, overhead_ms,
                upstream_ms, metadata, started_at, finished_at)
            SELECT uuid_in(lpad(to_hex({offset} + g), 32, '0')::cstring), 1 + g % {PROJECTS},
                1 + g % {PROJECTS}, CASE WHEN g % 2 = 0 THEN 'openai' ELSE 'anthropic' END,
                'model-' || (g % 3), '/v1/chat/completions', CASE WHEN g % 50 = 0 THEN 429
                ELSE 200 END, false, 300 + g % 700, g % 100, 50 + g % 400, 'provider',
                (g % 9973) / 10000000.0, false, NULL, 0.4, 800,
                jsonb_build_object('feature', 'f' || (g % 7), 'user_id', 'u' || (g % 1000)),
                now() - ((({offset} + g) % 7776000) * interval '1 second'),
                now() - ((({offset} + g) % 7776000) * interval '1 second')
            FROM generate_series(1, {n}) AS g""")
    await conn.execute("ANALYZE usage_records; ANALYZE usage_hourly")
    return time.perf_counter() - started


async def metadata_query_ms(conn: asyncpg.Connection, repeat: int = 5) -> tuple[float, int]:
    """Median ms of one project's last 30 days grouped by metadata feature (raw rows)."""
    times = []
    groups = 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = await conn.fetch(
            "SELECT metadata->>'feature' AS feature, count(*), sum(cost_usd) "
            "FROM usage_records WHERE project_id = 3 AND started_at >= now() - interval '30 days' "
            "GROUP BY 1")
        times.append((time.perf_counter() - started) * 1000)
        groups = len(result)
    return statistics.median(times), groups


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"gateway_bench_ledger_{os.getpid()}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(args.database_url, name)
    results: dict[str, Any] = {"rows": args.rows, "rounds": args.rounds, "scenarios": {},
                               "loadavg_before": os.getloadavg()}
    try:
        conn = await asyncpg.connect(dsn)
        await gwdb.init_connection(conn)
        await migrate.migrate(conn, REPO / "migrations")
        pool = await gwdb.create_pool(dsn, DatabaseSettings(pool_min_size=2, pool_max_size=4))
        rows = make_rows(args.rows, seed=1)

        async def reset() -> None:
            await conn.execute("TRUNCATE usage_records")  # empties usage_hourly too

        async def trigger(on: bool) -> None:  # every rollup trigger (hourly, and later ones)
            state = "ENABLE" if on else "DISABLE"
            await conn.execute(f"ALTER TABLE usage_records {state} TRIGGER USER")

        async def ledger_on() -> float:
            await reset()
            return await drain(pool, rows)

        async def replayed() -> float:  # the table already holds every row (previous scenario)
            return await drain(pool, rows)

        async def ledger_off() -> float:
            await reset()
            await trigger(False)
            try:
                return await drain(pool, rows)
            finally:
                await trigger(True)

        async def copy_off() -> float:
            await reset()
            await trigger(False)
            try:
                return await raw_copy(pool, rows)
            finally:
                await trigger(True)

        async def two_writers() -> float:
            await reset()
            return await drain(pool, rows, writers=2)

        scenarios = {
            "ledger (rollup triggers on)": ledger_on,
            "ledger, replayed rows (all duplicates)": replayed,
            "ledger (rollup triggers off)": ledger_off,
            "raw COPY, no staging (triggers off)": copy_off,
            "2 ledgers at once (triggers on)": two_writers,
        }
        times: dict[str, list[float]] = {label: [] for label in scenarios}
        for _ in range(args.rounds):  # alternate, so a noisy moment hits every scenario
            for label, measure in scenarios.items():
                times[label].append(await measure())
        spill_times: dict[str, list[float]] = {"spill: append + fsync per 500 rows": [],
                                               "spill: read back + decode": []}
        for _ in range(args.rounds):
            written, read, size = spill_round_trip(rows)
            spill_times["spill: append + fsync per 500 rows"].append(written)
            spill_times["spill: read back + decode"].append(read)
        results["spill_bytes_per_row"] = round(size / len(rows))
        print(f"{'':<44} {'rows/s (median)':>16} {'best':>10}   ({args.rounds} rounds of "
              f"{len(rows):,} rows)")
        for label, seconds in {**times, **spill_times}.items():
            median, best = len(rows) / statistics.median(seconds), len(rows) / min(seconds)
            results["scenarios"][label] = {"rows_per_s_median": round(median),
                                           "rows_per_s_best": round(best),
                                           "seconds": [round(x, 3) for x in seconds]}
            print(f"{label:<44} {median:>16,.0f} {best:>10,.0f}")
        print(f"spill file: {size / len(rows):.0f} bytes per row")
        await ledger_on()
        exact = await conn.fetchval("""
            SELECT (SELECT sum(cost_usd) FROM usage_records)
                 = (SELECT sum(cost_usd) FROM usage_hourly)""")
        results["rollups_exact"] = bool(exact)
        print(f"rollup totals equal raw sums: {exact}")
        if args.preload:
            await reset()
            loading = await preload(conn, args.preload)
            results["preload"] = {"rows": args.preload, "seconds": round(loading, 1)}
            print(f"preloaded {args.preload:,} rows in {loading:.0f} s "
                  f"({args.preload / loading:,.0f} rows/s, INSERT ... SELECT through the trigger)")
            at_scale = []
            for seed in range(2, 2 + args.rounds):
                more = make_rows(args.rows, seed=seed)
                at_scale.append(await drain(pool, more))
            rate = len(rows) / statistics.median(at_scale)
            results["scenarios"][f"ledger on top of {args.preload:,} rows"] = {
                "rows_per_s_median": round(rate), "seconds": [round(x, 3) for x in at_scale]}
            print(f"ledger on top of {args.preload:,} rows: {rate:,.0f} rows/s (median)")
            ms, groups = await metadata_query_ms(conn)
            results["metadata_query_ms"] = round(ms, 1)
            print(f"one project's 30 days by metadata feature ({groups} groups): {ms:.1f} ms")
            size_text = await conn.fetchval(
                "SELECT pg_size_pretty(pg_total_relation_size('usage_records'))")
            hourly = await conn.fetchval("SELECT count(*) FROM usage_hourly")
            results["usage_records_size"] = size_text
            results["usage_hourly_rows"] = hourly
            print(f"usage_records: {size_text}; usage_hourly: {hourly:,} rows")
            exact = await conn.fetchval("""
                SELECT (SELECT sum(cost_usd) FROM usage_records)
                     = (SELECT sum(cost_usd) FROM usage_hourly)""")
            print(f"rollup totals equal raw sums at scale: {exact}")
            results["rollups_exact_at_scale"] = bool(exact)
        await pool.close()
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    results["loadavg_after"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preload", type=int, default=0)
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    results["environment"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "machine": platform.machine()}
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir / f"ledger-{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
