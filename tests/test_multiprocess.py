"""Three gateway processes on one PostgreSQL and one Redis: limits hold across replicas."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import FakeUpstream, chat_body
from test_serve import Served, start_gateway_process, wait_gateway_exit

from gateway import projects
from gateway.pricing import PriceTable
from gateway.settings import load_settings
from gateway.testing.fake_upstream import count_prompt_tokens

REPLICAS = 3
MODEL = "gpt-4o-mini"


@pytest.fixture
async def replicas(database_url: str, redis_url: str, fake_upstream: FakeUpstream,
                   db: asyncpg.Connection) -> AsyncIterator[list[Served]]:
    # A Redis database of its own, emptied: project ids restart with every test.
    parts = urlsplit(redis_url)
    isolated = urlunsplit(parts._replace(path="/13"))
    client = aioredis.from_url(isolated)
    await client.flushdb()
    await client.aclose()
    env = {"GATEWAY_DATABASE_URL": database_url, "OPENAI_BASE_URL": fake_upstream.url,
           "GATEWAY_RATELIMIT_BACKEND": "redis", "GATEWAY_REDIS_URL": isolated,
           "GATEWAY_DATABASE_MIGRATE_ON_START": "false", "GATEWAY_LOGGING_LEVEL": "info",
           "GATEWAY_SERVER_WORKERS": "1"}  # replicas of one process each
    started = await asyncio.gather(*(start_gateway_process(env) for _ in range(REPLICAS)))
    try:
        yield list(started)
    finally:
        for served in started:
            if served.process.returncode is None:
                served.process.terminate()
        for served in started:
            await wait_gateway_exit(served)


async def _project(db: asyncpg.Connection, **fields: object) -> str:
    row = await projects.create_project(db, {"name": f"mp-{time.monotonic_ns()}", **fields})
    _, key = await projects.issue_key(db, row["id"])
    return key


async def _burst(replicas: list[Served], key: str, body: dict, count: int,
                 **headers: str) -> list[int]:
    targets = itertools.cycle(replicas)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(served: Served) -> int:
            async with http.post(f"{served.url}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}", **headers}) as r:
                await r.read()
                return r.status
        return list(await asyncio.gather(*(one(next(targets)) for _ in range(count))))


async def _rows(db: asyncpg.Connection, count: int) -> list[asyncpg.Record]:
    for _ in range(200):  # bounded: the ledgers flush every 0.2 s
        rows = await db.fetch("SELECT * FROM usage_records")
        if len(rows) >= count:
            return list(rows)
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} usage rows")


async def test_budget_rate_limit_and_idempotency_hold_across_replicas(
        replicas: list[Served], fake_upstream: FakeUpstream, db: asyncpg.Connection) -> None:
    # (a) a budget with room for 50 calls; the fake answers exactly max_tokens tokens,
    # so each call costs exactly its reserved worst case.
    body = chat_body(max_tokens=10)
    price = PriceTable.load(load_settings(environ={}).pricing).get(MODEL)
    assert price is not None
    cost = (count_prompt_tokens(body["messages"]) * price.input + 10 * price.output) / 10**6
    limit = cost * 50
    key = await _project(db, plan="enterprise", monthly_budget_usd=limit)
    statuses = await _burst(replicas, key, body, 300)
    assert set(statuses) <= {200, 402}
    served = statuses.count(200)
    rows = await _rows(db, 300)
    spent = sum((r["cost_usd"] for r in rows if r["status"] == 200), Decimal(0))
    assert spent == served * cost
    assert spent <= limit, f"overspent: {spent} > {limit}"
    assert spent >= limit * Decimal("0.9"), f"over-cautious: {served} of 50 served"

    # (b) 60 requests a minute: exactly 60 of 150 get through (away from a minute edge)
    await db.execute("TRUNCATE usage_records")
    if time.time() % 60 > 45:
        await asyncio.sleep(61 - time.time() % 60)
    key = await _project(db, plan="free")
    statuses = await _burst(replicas, key, chat_body(), 150)
    assert statuses.count(200) == 60 and statuses.count(429) == 90

    # (c) one X-Request-Id, 50 concurrent calls: exactly one reaches the upstream
    before = fake_upstream.state.received
    key = await _project(db, plan="enterprise")
    statuses = await _burst(replicas, key, chat_body(), 50, **{"X-Request-Id": "same-id"})
    assert sorted(statuses) == [200] + [409] * 49
    assert fake_upstream.state.received - before == 1
