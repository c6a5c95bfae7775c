"""Function calls a request, with budgets and Redis rate limits and without: a count, not a time.

`overhead.py` and `cpu_ab.py` time the proxies; on this shared machine a round's CPU a
request moves by tens of microseconds, more than any one change to the limits path is worth.
A count of calls hardly drifts (by a call or two a request: the ledger's flushes and the
leases' renewals that fall in the window). This script serves one gateway in-process (the fake
upstream beside it, PostgreSQL and Redis as `overhead.py` uses them), sends the bench's own
request (`overhead.request_body`) with two project keys, `overhead.py`'s plain project and
its limited one, and counts with cProfile every call the process makes while it does:

    .venv/bin/python bench/calls.py [--requests 2000] [--top 25]

Both keys go through the same client and server code, so the difference between them is
the limits' own: the added calls by function, Python functions apart from builtins. In stop
25 the limits added 134 calls a request, and 40 to 50 us a request in the server: about a
third of a microsecond a call on average, though a call's own cost varies far more than
that (bench/README.md). A count is not a time: check a cut with `cpu_ab.py` too.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import overhead as o
from aiohttp import web

from gateway.app import build_app
from gateway.connections import make_runner
from gateway.settings import settings_from_mapping
from gateway.testing.fake_upstream import start_fake_upstream

ADMIN_TOKEN = "bench-calls-admin-token-0123456789"
PLAIN_PROJECT = {"plan": "enterprise"}  # no limits, no budget: the "gateway" target's


async def post(session: aiohttp.ClientSession, url: str, body: Any, token: str) -> Any:
    async with session.post(url, data=body if isinstance(body, bytes) else json.dumps(body),
                            headers={"Authorization": f"Bearer {token}",
                                     "Content-Type": "application/json"}) as resp:
        data = await resp.read()
        if resp.status not in (200, 201):
            raise o.BenchError(f"{url} answered {resp.status}: {data[:300]!r}")
        return json.loads(data)


async def key_for(session: aiohttp.ClientSession, base: str, project: dict[str, Any]) -> str:
    made = await post(session, f"{base}/api/admin/projects",
                      {"name": f"calls-{os.urandom(4).hex()}", **project}, ADMIN_TOKEN)
    issued = await post(session, f"{base}/api/admin/projects/{made['id']}/keys", {},
                        ADMIN_TOKEN)
    return str(issued["key"])


async def send(session: aiohttp.ClientSession, url: str, body: bytes, key: str, n: int) -> None:
    for _ in range(n):  # bounded
        await post(session, url, body, key)


def calls_by_function(profile: cProfile.Profile) -> Counter[str]:
    stats = pstats.Stats(profile)
    counts: Counter[str] = Counter()
    for (path, line, name), (_, calls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.split("site-packages/")[-1].removeprefix(str(Path.cwd()) + "/")
        counts[f"{where}:{line}:{name}" if line else name] += calls
    return counts


async def measure(args: argparse.Namespace, dsn: str) -> dict[str, Counter[str]]:
    upstream, upstream_url = await start_fake_upstream()
    settings = settings_from_mapping({
        "database": {"url": dsn},
        "auth": {"admin_token": ADMIN_TOKEN},
        "logging": {"level": "warning"},
        "ratelimit": {"backend": "redis", "redis_url": args.redis_url},
        "providers": {"openai": {"base_url": upstream_url, "api_key": "sk-bench"}},
    }, {})
    runner = make_runner(build_app(settings))
    await runner.setup()
    port = o.free_ports(1)[0]
    await web.TCPSite(runner, o.HOST, port).start()
    base = f"http://{o.HOST}:{port}"
    url = f"{base}/v1/chat/completions"
    body = o.request_body(stream=False)
    try:
        async with aiohttp.ClientSession() as session:
            keys = {"gateway": await key_for(session, base, PLAIN_PROJECT),
                    "limits": await key_for(session, base, o.LIMITED_PROJECT)}
            for key in keys.values():
                await send(session, url, body, key, 200)  # warm: leases, caches, pools
            counted = {}
            for name, key in keys.items():
                profile = cProfile.Profile()
                profile.enable()
                await send(session, url, body, key, args.requests)
                profile.disable()
                counted[name] = calls_by_function(profile)
            return counted
    finally:
        await runner.cleanup()
        await upstream.cleanup()


def report(counted: dict[str, Counter[str]], n: int, top: int) -> None:
    per = {name: sum(c.values()) / n for name, c in counted.items()}
    print(f"function calls a request ({n} requests each, client and server in one process):")
    for name, value in per.items():
        print(f"  {name:8} {value:8.1f}")
    added = Counter({k: (counted["limits"][k] - counted["gateway"][k]) / n
                     for k in counted["limits"].keys() | counted["gateway"].keys()})
    python = {k: v for k, v in added.items() if ".py:" in k and v}
    builtin = {k: v for k, v in added.items() if ".py:" not in k and v}
    print(f"  limits - gateway: {per['limits'] - per['gateway']:+.1f} calls, of which "
          f"{sum(python.values()):+.1f} to Python functions and {sum(builtin.values()):+.1f} "
          "to builtins and C methods")
    for title, part in (("Python functions", python), ("builtins and C methods", builtin)):
        print(f"\nadded calls a request, {title}:")
        for where, value in sorted(part.items(), key=lambda kv: -abs(kv[1]))[:top]:
            print(f"  {value:+6.2f}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--database-url", default=os.environ.get(
        "GATEWAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL DSN allowed to CREATE DATABASE; the gateway gets a fresh one")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    db = f"gateway_calls_{os.getpid()}"
    o.create_database(args.database_url, db)
    try:
        counted = asyncio.run(measure(args, o.with_database(args.database_url, db)))
    finally:
        o.drop_database(args.database_url, db)
    report(counted, args.requests, args.top)


if __name__ == "__main__":
    main()
