"""Analytics benchmark: `GET /api/analytics/usage` over 10 million usage rows.

One command: a fresh PostgreSQL database (unique name, dropped at the end), migrated; a few
teams and projects; N synthetic usage rows over D days (8 provider/model pairs, a metadata
feature, 2% error rows) loaded with INSERT ... SELECT generate_series in time-ordered chunks
on several connections at once (the rollup trigger keeps usage_hourly as they land: the load
time includes it); then the real app (build_app on an aiohttp test server) answers
`GET /api/analytics/usage` for a 90-day range grouped by day (with totals and per-day costs by
model) R times, for the admin's scope, for one project's key, and for the admin with a range
that starts and ends mid-day (its partial days read the hourly rollup). Reported: load time, median
and p95 latency, and whether the answer's totals equal a direct SUM over usage_records.

    .venv/bin/python bench/analytics.py [--rows 10000000] [--days 120] [--repeat 30]

Target (issue 6): median under 100 ms with 10 million rows. JSON goes to bench/results/.
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
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from gateway import migrate, projects  # noqa: E402
from gateway.app import build_app  # noqa: E402
from gateway.http import analytics  # noqa: E402
from gateway.settings import settings_from_mapping  # noqa: E402

TARGET_MEDIAN_MS = 100.0
ADMIN_TOKEN = "bench-admin-token"
PROJECTS = 6
# (provider, model, USD per million input tokens, per million output tokens)
MODELS = [("openai", "gpt-4o", "2.5", "10"), ("openai", "gpt-4o-mini", "0.15", "0.6"),
          ("openai", "o3-mini", "1.1", "4.4"), ("anthropic", "claude-3-5-sonnet", "3", "15"),
          ("anthropic", "claude-3-5-haiku", "0.8", "4"), ("gemini", "gemini-1.5-pro", "1.25", "5"),
          ("gemini", "gemini-1.5-flash", "0.075", "0.3"), ("mistral", "mistral-large", "2", "6")]

LOAD_SQL = """
INSERT INTO usage_records (request_id, project_id, api_key_id, provider, model, endpoint,
    status, streamed, input_tokens, cached_input_tokens, output_tokens, usage_source,
    cost_usd, priced_by_fallback, price_model, overhead_ms, upstream_ms, error_code, metadata,
    started_at, finished_at)
SELECT lpad(to_hex(g), 32, '0')::uuid, ($5::bigint[])[1 + g % $6], NULL,
       ($7::text[])[m], ($8::text[])[m], '/v1/chat/completions',
       CASE WHEN g % 50 = 0 THEN 429 ELSE 200 END, g % 3 = 0, tin, tin / 4, tout, 'provider',
       CASE WHEN g % 50 = 0 THEN 0
            ELSE ((tin - tin / 4) * ($9::numeric[])[m] + tin / 4 * ($9::numeric[])[m] / 2
                  + tout * ($10::numeric[])[m]) / 1000000 END,
       false, ($8::text[])[m], 0.4, 300, CASE WHEN g % 50 = 0 THEN 'rate_limited' END,
       jsonb_build_object('feature', (ARRAY['chat', 'search', 'summarize'])[1 + g % 3]),
       $3::timestamptz + (g - 1) * $4::interval, $3::timestamptz + (g - 1) * $4::interval
FROM (SELECT g, 1 + (g * 7 + g / 13) % 8 AS m, (g * 7919) % 4000 AS tin,
             (g * 104729) % 1500 AS tout
      FROM generate_series($1::bigint, $2::bigint) AS g) s
"""


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def setup(dsn: str, rows: int, days: int, chunk: int,
                workers: int) -> tuple[list[int], str, float, dt.datetime, dt.datetime]:
    """Migrate, create teams/projects/a key, load the rows; answer (project ids, a key, load
    seconds, first row time, end of data)."""
    conn = await asyncpg.connect(dsn)
    await migrate.migrate(conn, REPO / "migrations")
    team_ids = [await conn.fetchval("INSERT INTO teams (name) VALUES ($1) RETURNING id", n)
                for n in ("search", "support")]
    project_ids = [await conn.fetchval(
        # enterprise: no plan limits, which now hold analytics calls too (not what is measured)
        "INSERT INTO projects (name, team_id, monthly_budget_usd, plan) "
        "VALUES ($1, $2, 50000, 'enterprise') RETURNING id",
        f"bench-{i}", team_ids[i % 2] if i < PROJECTS - 1 else None)
        for i in range(PROJECTS)]
    key, prefix = projects.new_key()
    await conn.execute("INSERT INTO api_keys (project_id, prefix, key_hash) VALUES ($1, $2, $3)",
                       project_ids[0], prefix, projects.hash_key(key))
    await conn.close()

    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    first = end - dt.timedelta(days=days)
    step = dt.timedelta(days=days) / rows
    bounds = [(lo, min(lo + chunk - 1, rows)) for lo in range(1, rows + 1, chunk)]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for bound in bounds:
        queue.put_nowait(bound)
    args = (first, step, project_ids, len(project_ids), [m[0] for m in MODELS],
            [m[1] for m in MODELS], [Decimal(m[2]) for m in MODELS],
            [Decimal(m[3]) for m in MODELS])

    async def work() -> None:
        c = await asyncpg.connect(dsn)
        await c.execute("SET synchronous_commit = off")
        while not queue.empty():
            lo, hi = queue.get_nowait()
            await c.execute(LOAD_SQL, lo, hi, *args)
            print(f"  rows {lo:>10,} .. {hi:>10,} loaded", flush=True)
        await c.close()

    started = time.perf_counter()
    await asyncio.gather(*(work() for _ in range(workers)))
    load_s = time.perf_counter() - started
    conn = await asyncpg.connect(dsn)
    await conn.execute("VACUUM ANALYZE usage_records")
    await conn.execute("VACUUM ANALYZE usage_hourly")
    await conn.close()
    return project_ids, key, load_s, first, end


def app_with_routes(dsn: str) -> Any:
    settings = settings_from_mapping({
        "database": {"url": dsn, "migrate_on_start": False},
        "auth": {"admin_token": ADMIN_TOKEN}, "logging": {"level": "warning"}}, {})
    app = build_app(settings)
    served = {r.canonical for r in app.router.resources()}
    if "/api/analytics/usage" not in served:  # before routes.py lists it
        app.router.add_get("/api/analytics/usage", analytics.usage)
    return app


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def time_usage(client: TestClient, params: dict[str, str], headers: dict[str, str],
                     repeat: int) -> tuple[list[float], Any]:
    body: Any = None
    for _ in range(3):  # warm-up: connections, prepared statements, caches
        resp = await client.get("/api/analytics/usage", params=params, headers=headers)
        assert resp.status == 200, await resp.text()
        await resp.read()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        resp = await client.get("/api/analytics/usage", params=params, headers=headers)
        text = await resp.text()
        samples.append((time.perf_counter() - started) * 1000)
        assert resp.status == 200, text
        body = json.loads(text, parse_float=Decimal)
    return samples, body


async def check(dsn: str, body: Any, project_id: int | None) -> dict[str, Any]:
    """The answer's totals against a direct SUM over the raw rows of the same range."""
    conn = await asyncpg.connect(dsn)
    start = dt.datetime.fromisoformat(body["start_date"])
    end = dt.datetime.fromisoformat(body["end_date"])
    started = time.perf_counter()
    raw = await conn.fetchrow(
        "SELECT coalesce(sum(cost_usd), 0) AS cost, count(*) AS requests, "
        "coalesce(sum(input_tokens::bigint + output_tokens), 0) AS tokens "
        "FROM usage_records WHERE started_at >= $1 AND started_at < $2 "
        "AND ($3::bigint IS NULL OR project_id = $3)", start, end, project_id)
    raw_ms = (time.perf_counter() - started) * 1000
    by_model = {r["model"]: r["cost"] for r in await conn.fetch(
        "SELECT model, sum(cost_usd) AS cost FROM usage_records WHERE started_at >= $1 "
        "AND started_at < $2 AND ($3::bigint IS NULL OR project_id = $3) GROUP BY 1",
        start, end, project_id)}
    await conn.close()
    periods_cost = sum((p["cost"] for p in body["periods"]), Decimal(0))
    return {"raw_sum_ms": round(raw_ms, 1), "raw_cost": str(raw["cost"]),
            "api_cost": str(body["total_cost"]), "raw_requests": raw["requests"],
            "api_requests": body["total_requests"],
            "equal": (body["total_cost"] == raw["cost"] == periods_cost
                      and body["total_requests"] == raw["requests"]
                      and body["total_tokens"] == raw["tokens"]
                      and body["by_model"] == by_model)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"gw_bench_analytics_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = with_database(args.dsn, name)
    try:
        print(f"database {name}: loading {args.rows:,} rows over {args.days} days", flush=True)
        project_ids, key, load_s, first, end = await setup(dsn, args.rows, args.days,
                                                           args.chunk, args.workers)
        conn = await asyncpg.connect(dsn)
        hourly_rows = await conn.fetchval("SELECT count(*) FROM usage_hourly")
        raw_rows = await conn.fetchval("SELECT count(*) FROM usage_records")
        sizes = await conn.fetchrow(
            "SELECT pg_total_relation_size('usage_records') AS raw, "
            "pg_total_relation_size('usage_hourly') AS hourly")
        await conn.close()
        print(f"loaded {raw_rows:,} rows in {load_s:.1f} s ({raw_rows / load_s:,.0f} rows/s); "
              f"usage_hourly has {hourly_rows:,} rows", flush=True)
        range_end = (end - dt.timedelta(days=1)).date()
        params = {"start_date": (range_end - dt.timedelta(days=args.range_days - 1)).isoformat(),
                  "end_date": range_end.isoformat(), "group_by": "day"}
        # The same 90 days starting and ending mid-day: the partial days read usage_hourly.
        edges = {**params, "start_date": f"{params['start_date']}T05:00:00Z",
                 "end_date": f"{params['end_date']}T17:00:00Z"}
        admin_auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        results: dict[str, Any] = {}
        async with TestClient(TestServer(app_with_routes(dsn))) as client:
            for scope, query, headers, project_id in (
                    ("admin", params, admin_auth, None),
                    ("project_key", params, {"Authorization": f"Bearer {key}"},
                     project_ids[0]),
                    ("admin_mid_day_edges", edges, admin_auth, None)):
                samples, body = await time_usage(client, query, headers, args.repeat)
                verdict = await check(dsn, body, project_id)
                results[scope] = {
                    "median_ms": round(statistics.median(samples), 2),
                    "p95_ms": round(percentile(samples, 0.95), 2),
                    "min_ms": round(min(samples), 2), "max_ms": round(max(samples), 2),
                    "periods": len(body["periods"]), "models": len(body["by_model"]),
                    **verdict}
                print(f"{scope:>19}: median {results[scope]['median_ms']} ms, "
                      f"p95 {results[scope]['p95_ms']} ms over {args.repeat} calls; totals "
                      f"{'EQUAL' if verdict['equal'] else 'DIFFER'} to a direct SUM "
                      f"(${verdict['api_cost']}; the raw SUM itself took "
                      f"{verdict['raw_sum_ms']} ms)", flush=True)
        return {"rows": raw_rows, "days": args.days, "range_days": args.range_days,
                "repeat": args.repeat, "params": params, "load_s": round(load_s, 1),
                "load_rows_per_s": round(raw_rows / load_s), "usage_hourly_rows": hourly_rows,
                "usage_records_bytes": sizes["raw"], "usage_hourly_bytes": sizes["hourly"],
                "data_from": first.isoformat(), "data_to": end.isoformat(),
                "target_median_ms": TARGET_MEDIAN_MS, "results": results}
    finally:
        if not args.keep:
            admin = await asyncpg.connect(args.dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get(
        "GATEWAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server DSN; the bench creates (and drops) its own database")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--range-days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=500_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    report.update({"python": platform.python_version(), "machine": platform.machine(),
                   "cpus": os.cpu_count(),
                   "when": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")})
    out = BENCH / "results" / f"analytics-{report['when']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    met = all(r["median_ms"] < TARGET_MEDIAN_MS and r["equal"]
              for r in report["results"].values())
    print("target met" if met else "TARGET MISSED")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
