"""Dashboard benchmark: every page's server render time over 1 million ledger rows.

One command: a fresh PostgreSQL database (unique name, dropped at the end), migrated, filled
by bench/analytics.py's loader (INSERT ... SELECT generate_series in chunks on several
connections; the rollup triggers keep usage_hourly and usage_daily as rows land, as in
production), plus a webhook endpoint with deliveries. Then the real app (build_app on an
aiohttp test server, signed in through the login form) renders each page R times, for the
admin and for one project's sign-in. Reported per page: median, p95 and max milliseconds,
and bytes. Pages read the rollups (usage_hourly, usage_daily); the requests page reads one
keyset page of raw rows through the time index, never a scan.

    .venv/bin/python bench/dashboard.py [--rows 1000000] [--days 45] [--repeat 15]
                                        [--projects 6]

Target (issue 14): every page under 150 ms at 1 million rows. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from gateway import webhooks  # noqa: E402
from gateway.app import build_app  # noqa: E402
from gateway.settings import settings_from_mapping  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_analytics", BENCH / "analytics.py")
assert _spec is not None and _spec.loader is not None
loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loader)  # the analytics bench's loader: one way to fill a ledger

TARGET_MS = 150.0
ADMIN_TOKEN = loader.ADMIN_TOKEN


async def add_webhooks(dsn: str, deliveries: int) -> None:
    """One endpoint with `deliveries` outbox rows, a tenth of them failed."""
    conn = await asyncpg.connect(dsn)
    view, _ = await webhooks.create_endpoint(
        conn, None, project_id=None, url="http://127.0.0.1:1/hook", events=["budget.alert"],
        fmt="json", description="bench", enabled=False, secret=None)
    endpoint = view["id"]
    await conn.execute(
        """INSERT INTO webhook_outbox (endpoint_id, event_id, event_type, project_id, payload,
               attempts, next_attempt_at, delivered_at, failed_at, last_status)
           SELECT $1, gen_random_uuid(), 'budget.alert', NULL, '{}'::jsonb, 1, now(),
                  CASE WHEN g % 10 <> 0 THEN now() END, CASE WHEN g % 10 = 0 THEN now() END,
                  CASE WHEN g % 10 = 0 THEN 500 ELSE 200 END
           FROM generate_series(1, $2) g""", endpoint, deliveries)
    await conn.close()


async def sign_in(client: TestClient, token: str) -> None:
    html = await (await client.get("/dashboard/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', html)
    assert csrf is not None
    resp = await client.post("/dashboard/login", data={"csrf": csrf.group(1), "token": token},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()


async def time_page(client: TestClient, path: str, repeat: int) -> dict[str, Any]:
    for _ in range(2):  # warm-up: connections, prepared statements, caches
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 200, (path, resp.status, (await resp.text())[:300])
        await resp.read()
    samples, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        resp = await client.get(path, allow_redirects=False)
        body = await resp.read()
        samples.append((time.perf_counter() - started) * 1000)
        assert resp.status == 200, path
        size = len(body)
    return {"path": path, "median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(loader.percentile(samples, 0.95), 1),
            "max_ms": round(max(samples), 1), "bytes": size}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"gw_bench_dashboard_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = loader.with_database(args.dsn, name)
    try:
        loader.PROJECTS = args.projects  # the loader spreads rows over this many projects
        print(f"database {name}: loading {args.rows:,} rows over {args.days} days and "
              f"{args.projects} projects", flush=True)
        project_ids, key, load_s, _, _ = await loader.setup(dsn, args.rows, args.days,
                                                            args.chunk, args.workers)
        await add_webhooks(dsn, 500)
        conn = await asyncpg.connect(dsn)
        counts = {table: await conn.fetchval(f"SELECT count(*) FROM {table}")
                  for table in ("usage_records", "usage_hourly", "usage_daily")}
        request_id = await conn.fetchval(
            "SELECT request_id FROM usage_records ORDER BY started_at DESC LIMIT 1")
        await conn.close()
        print(f"loaded in {load_s:.1f} s: {counts}", flush=True)
        settings = settings_from_mapping({
            "database": {"url": dsn, "migrate_on_start": False},
            "auth": {"admin_token": ADMIN_TOKEN}, "logging": {"level": "warning"},
            "webhooks": {"enabled": False}}, {})
        project = project_ids[0]
        admin_pages = ["/dashboard", "/dashboard/live", "/dashboard/projects",
                       f"/dashboard/projects/{project}", "/dashboard/teams",
                       "/dashboard/requests", "/dashboard/requests?model=gpt-4o&status=error",
                       f"/dashboard/requests?project_id={project}&since=2000-01-01",
                       f"/dashboard/requests/{request_id}", "/dashboard/webhooks",
                       "/dashboard/prices", "/dashboard/health"]
        project_pages = ["/dashboard", "/dashboard/projects", f"/dashboard/projects/{project}",
                         "/dashboard/requests"]
        results: list[dict[str, Any]] = []
        for who, token, pages in (("admin", ADMIN_TOKEN, admin_pages),
                                  ("project", key, project_pages)):
            client = TestClient(TestServer(build_app(settings)))
            await client.start_server()
            try:
                await sign_in(client, token)
                # Later pages of the requests list: follow "Older" once (a keyset page).
                html = await (await client.get("/dashboard/requests")).text()
                older = re.search(r'rel="next" data-testid="older" href="([^"]+)"', html)
                if older:
                    pages = [*pages, older.group(1).replace("&amp;", "&")]
                for path in pages:
                    result = {"who": who, **await time_page(client, path, args.repeat)}
                    results.append(result)
                    print(f"  {who:8} {path[:60]:60} median {result['median_ms']:7.1f} ms  "
                          f"p95 {result['p95_ms']:7.1f}  max {result['max_ms']:7.1f}  "
                          f"{result['bytes']:>8,} B", flush=True)
            finally:
                await client.close()
    finally:
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    worst = max(results, key=lambda r: r["median_ms"])
    return {"bench": "dashboard", "rows": args.rows, "days": args.days,
            "projects": args.projects,
            "repeat": args.repeat, "load_s": round(load_s, 1), "tables": counts,
            "pages": results, "worst_median_ms": worst["median_ms"], "target_ms": TARGET_MS,
            "passed": all(r["median_ms"] < TARGET_MS for r in results),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get(
        "GATEWAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--projects", type=int, default=loader.PROJECTS)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    out = BENCH / "results" / f"dashboard-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nworst median {report['worst_median_ms']} ms (target < {TARGET_MS} ms): "
          f"{'PASS' if report['passed'] else 'FAIL'}; {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
