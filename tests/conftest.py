"""Shared fixtures: a real PostgreSQL database, a real fake upstream, a real gateway app.

PostgreSQL comes from `GATEWAY_TEST_DATABASE_URL` (default: the local server at
127.0.0.1:5432, database `test`). Off CI, an unreachable server is replaced by an embedded
one (pgserver); on CI (`CI=true`) it is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import migrate
from gateway.app import build_app
from gateway.connections import make_runner
from gateway.db import init_connection
from gateway.keys import POOL
from gateway.settings import Settings, settings_from_mapping
from gateway.testing.fake_upstream import STATE, FakeUpstreamState, start_fake_upstream
from gateway.testing.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/test"
ADMIN_TOKEN = "test-admin-token"
# usage_hourly and usage_daily are emptied by usage_records' own TRUNCATE trigger.
TABLES = ("usage_records, api_keys, projects, teams, budget_periods, budget_leases, "
          "provider_credentials, webhook_endpoints, webhook_outbox, alerts_fired, "
          "budget_reclaimed, ledger_dead_letters, manual_costs, provider_usage, provider_costs, "
          "sync_state, reconciliation_alerts")


async def away_from_a_minute_edge(needs_s: float) -> None:
    """Wait for the next minute when fewer than `needs_s` seconds are left of this one, so
    a test counting requests against a per-minute limit sees one window."""
    left = 60 - time.time() % 60
    if left < needs_s:
        await asyncio.sleep(left + 0.05)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def start_pg_proxy(database_url: str) -> tuple[TcpProxy, str]:
    """A TCP path to the test database that can be cut or black-holed: (proxy, its DSN)."""
    parts = urlsplit(database_url)
    if parts.hostname:
        proxy = TcpProxy(host=parts.hostname, port=parts.port or 5432)
    else:  # embedded server: a Unix socket directory in ?host=
        socket_dir = parts.query.split("host=", 1)[1].split("&")[0]
        proxy = TcpProxy(unix_path=f"{socket_dir}/.s.PGSQL.5432")
    await proxy.start()
    user = parts.username or "postgres"
    auth = f"{user}:{parts.password}" if parts.password else user
    dsn = with_database(f"postgresql://{auth}@127.0.0.1:{proxy.port}/x", parts.path.lstrip("/"))
    return proxy, dsn


@pytest.fixture
async def pg_proxy(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP path to the test database that can be cut or black-holed: (proxy, DSN)."""
    proxy, dsn = await start_pg_proxy(database_url)
    yield proxy, dsn
    await proxy.cut()


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    dsn = os.environ.get("GATEWAY_TEST_DATABASE_URL", DEFAULT_TEST_DSN)
    if asyncio.run(_reachable(dsn)):
        yield dsn
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required on CI and {dsn} is unreachable", pytrace=False)
    import pgserver

    with tempfile.TemporaryDirectory(prefix="gateway-test-pg-") as tmp:
        server = pgserver.get_server(tmp, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def database_url(pg_server_dsn: str) -> Iterator[str]:
    """A fresh database for this test session, migrated once, dropped at the end."""
    name = f"gw_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        admin = await asyncpg.connect(pg_server_dsn)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        conn = await asyncpg.connect(with_database(pg_server_dsn, name))
        await migrate.migrate(conn, ROOT / "migrations")
        await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(pg_server_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    asyncio.run(create())
    try:
        yield with_database(pg_server_dsn, name)
    finally:
        asyncio.run(drop())


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, emptied before each test."""
    conn = await asyncpg.connect(database_url)
    await init_connection(conn)
    await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    yield conn
    await conn.close()


@dataclass
class FakeUpstream:
    url: str  # base URL including /v1
    state: FakeUpstreamState
    runner: web.AppRunner

    def script(self, *behaviours: dict[str, Any]) -> None:
        self.state.script.extend(behaviours)


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    runner, url = await start_fake_upstream()
    yield FakeUpstream(url, runner.app[STATE], runner)
    await runner.cleanup()


SettingsFactory = Callable[..., Settings]
TEST_PROVIDER_KEY = "test-provider-key"


def fake_providers(v1_url: str) -> dict[str, dict[str, Any]]:
    """Every built-in provider pointed at the fake upstream, which speaks all their wires
    (OpenAI and Mistral at .../v1, the others at the host, as their SDKs set base URLs).
    Retries pause only a millisecond, so fault tests stay fast."""
    host = v1_url.removesuffix("/v1")
    fast = {"retry_backoff_s": 0.001, "retry_backoff_max_s": 0.01}
    return {
        "openai": {"base_url": v1_url, **fast},
        "mistral": {"base_url": v1_url, "api_key": TEST_PROVIDER_KEY, **fast},
        "azure": {"base_url": host, "api_key": TEST_PROVIDER_KEY, **fast},
        "anthropic": {"base_url": host, "api_key": TEST_PROVIDER_KEY, **fast},
        "gemini": {"base_url": host, "api_key": TEST_PROVIDER_KEY, **fast},
        "cohere": {"base_url": host, "api_key": TEST_PROVIDER_KEY, **fast},
    }


@pytest.fixture
def make_settings(database_url: str, fake_upstream: FakeUpstream,
                  tmp_path: Path) -> SettingsFactory:
    """Settings for a test gateway; keyword overrides are `section={key: value}` tables."""

    spill_dir = tmp_path / "spill"  # each test its own: a spill never reaches another test

    def make(**sections: dict[str, Any]) -> Settings:
        raw: dict[str, Any] = {
            "database": {"url": database_url, "migrate_on_start": False, "pool_min_size": 1,
                         "pool_max_size": 4},
            "auth": {"admin_token": ADMIN_TOKEN},
            "ledger": {"flush_interval_s": 0.02, "spill_dir": str(spill_dir)},
            "logging": {"level": "warning"},
            "providers": fake_providers(fake_upstream.url),
        }
        for name, values in sections.items():
            if name == "providers":
                for provider, table in values.items():
                    raw["providers"].setdefault(provider, {}).update(table)
            else:
                raw.setdefault(name, {}).update(values)
        return settings_from_mapping(raw, {})

    return make


GatewayFactory = Callable[..., Awaitable[TestClient]]


class GatewayTestServer(TestServer):
    """A test server built as `gateway serve` builds its own (`connections.make_runner`)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return make_runner(self.app, **kwargs)


@pytest.fixture
async def make_gateway(aiohttp_client: Any, make_settings: SettingsFactory,
                       db: asyncpg.Connection) -> GatewayFactory:
    async def make(**sections: dict[str, Any]) -> TestClient:
        app = build_app(make_settings(**sections))
        client: TestClient = await aiohttp_client(GatewayTestServer(app))
        return client

    return make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient:
    return await make_gateway()


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def create_project(client: TestClient, **fields: Any) -> tuple[dict[str, Any], str]:
    """A project (via the admin API) and a fresh key for it."""
    body = {"name": f"project-{uuid.uuid4().hex[:8]}", **fields}
    resp = await client.post("/api/admin/projects", json=body, headers=admin_headers())
    assert resp.status == 201, await resp.text()
    project = await resp.json()
    resp = await client.post(f"/api/admin/projects/{project['id']}/keys", json={},
                             headers=admin_headers())
    assert resp.status == 201, await resp.text()
    return project, (await resp.json())["key"]


async def wait_for_rows(client: TestClient, count: int, *, within_s: float = 5.0) -> list[Any]:
    """Usage rows, once at least `count` have been flushed (bounded wait)."""
    pool = client.app[POOL]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        rows = await pool.fetch("SELECT * FROM usage_records ORDER BY started_at")
        if len(rows) >= count or loop.time() > deadline:
            return list(rows)
        await asyncio.sleep(0.02)


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": "Say hello"}], **extra}


def replace_provider(settings: Settings, **changes: Any) -> Settings:
    openai = dataclasses.replace(settings.provider("openai"), **changes)
    return dataclasses.replace(settings, providers={**settings.providers, "openai": openai})


# --- Rate limiting and idempotency stores: real Redis, a fake Upstash over it, PostgreSQL. ---

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"
STORE_BACKENDS = ("memory", "redis", "upstash", "postgres")


def _redis_reachable(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: GATEWAY_TEST_REDIS_URL, else a `redis-server` started for the session."""
    import shutil
    import socket
    import subprocess
    import time

    url = os.environ.get("GATEWAY_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    if _redis_reachable(url):
        yield url
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"Redis is required on CI and {url} is unreachable", pytrace=False)
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"Redis at {url} is unreachable and no redis-server is on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="gateway-test-redis-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while not _redis_reachable(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not start", pytrace=False)
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
async def upstash(redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """The fake Upstash REST server over the test Redis: (url, token)."""
    from gateway.testing.upstash_server import start_upstash_server

    token = f"test-token-{uuid.uuid4().hex[:8]}"
    runner, url = await start_upstash_server(redis_url, token)
    yield url, token
    await runner.cleanup()


@dataclass
class StoreBackend:
    """Which store a contract test runs against, and where that store lives."""

    name: str
    redis_url: str | None = None
    database_url: str | None = None


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> StoreBackend:
    # Only the services the backend needs: memory runs without Redis or PostgreSQL.
    name = request.param
    backend = StoreBackend(name)
    if name in ("redis", "upstash"):
        backend.redis_url = request.getfixturevalue("redis_url")
    if name == "postgres":
        backend.database_url = request.getfixturevalue("database_url")
    return backend


async def delete_redis_prefix(url: str, prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def limiter(store_backend: StoreBackend) -> AsyncIterator[Any]:
    """Each rate-limit backend on its real store, with a key prefix of its own; closed after."""
    from gateway.ratelimit import MemoryLimiter, PostgresLimiter, RedisLimiter, UpstashLimiter
    from gateway.testing.upstash_server import start_upstash_server

    prefix = f"rl-test-{uuid.uuid4().hex[:10]}"
    timeout_s = 5.0  # generous: 200 concurrent hits queue for connections
    if store_backend.name == "memory":
        memory = MemoryLimiter()
        yield memory
        await memory.close()
    elif store_backend.name == "redis":
        assert store_backend.redis_url is not None
        redis_limiter = RedisLimiter.from_url(store_backend.redis_url, timeout_s=timeout_s,
                                              prefix=prefix)
        yield redis_limiter
        await redis_limiter.close()
        await delete_redis_prefix(store_backend.redis_url, prefix)
    elif store_backend.name == "upstash":
        assert store_backend.redis_url is not None
        runner, url = await start_upstash_server(store_backend.redis_url, "contract-token")
        upstash_limiter = UpstashLimiter.from_url(url, "contract-token", timeout_s=timeout_s,
                                                  prefix=prefix)
        yield upstash_limiter
        await upstash_limiter.close()
        await runner.cleanup()
        await delete_redis_prefix(store_backend.redis_url, prefix)
    else:
        assert store_backend.database_url is not None
        pool = await asyncpg.create_pool(store_backend.database_url, min_size=1, max_size=10)
        assert pool is not None
        pg_limiter = PostgresLimiter(pool, timeout_s=timeout_s, prefix=prefix)
        yield pg_limiter
        await pg_limiter.close()
        await pool.execute("DELETE FROM ratelimit_counters WHERE key LIKE $1", f"{prefix}:%")
        await pool.close()


@pytest.fixture
async def claims(store_backend: StoreBackend) -> AsyncIterator[Any]:
    """Each idempotency claim store on its real store, isolated per test; closed after."""
    from gateway.idempotency import MemoryClaims, PostgresClaims, RedisClaims, UpstashClaims
    from gateway.testing.upstash_server import start_upstash_server

    prefix = f"idem-test-{uuid.uuid4().hex[:10]}"
    if store_backend.name == "memory":
        memory = MemoryClaims()
        yield memory
        await memory.close()
    elif store_backend.name == "redis":
        assert store_backend.redis_url is not None
        redis_claims = RedisClaims.from_url(store_backend.redis_url, timeout_s=5.0, prefix=prefix)
        yield redis_claims
        await redis_claims.close()
        await delete_redis_prefix(store_backend.redis_url, prefix)
    elif store_backend.name == "upstash":
        assert store_backend.redis_url is not None
        runner, url = await start_upstash_server(store_backend.redis_url, "claims-token")
        upstash_claims = UpstashClaims.from_url(url, "claims-token", timeout_s=5.0, prefix=prefix)
        yield upstash_claims
        await upstash_claims.close()
        await runner.cleanup()
        await delete_redis_prefix(store_backend.redis_url, prefix)
    else:
        assert store_backend.database_url is not None
        pool = await asyncpg.create_pool(store_backend.database_url, min_size=1, max_size=10)
        assert pool is not None
        await pool.execute("TRUNCATE idempotency_keys")  # `db` truncates only its own tables
        pg_claims = PostgresClaims(pool, timeout_s=5.0)
        yield pg_claims
        await pg_claims.close()
        await pool.execute("TRUNCATE idempotency_keys")
        await pool.close()
