"""Fixtures of the fault suite: proxies in front of PostgreSQL and gateway processes, each
cleaned up (cut, killed) whatever the test did."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import FakeUpstream, start_pg_proxy

from gateway.testing.tcp_proxy import TcpProxy

from .harness import GatewayProcess, start_gateway

ProxyFactory = Callable[[], Awaitable[tuple[TcpProxy, str]]]
GatewayStarter = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def pg_proxy(database_url: str) -> AsyncIterator[ProxyFactory]:
    """Make proxies to the test database: (proxy, DSN through it)."""
    made: list[TcpProxy] = []

    async def make() -> tuple[TcpProxy, str]:
        proxy, dsn = await start_pg_proxy(database_url)
        made.append(proxy)
        return proxy, dsn

    yield make
    for proxy in made:
        await proxy.cut()


@pytest.fixture
async def gateways(fake_upstream: FakeUpstream,
                   db: asyncpg.Connection) -> AsyncIterator[GatewayStarter]:
    """Start `gateway serve` processes: `await gateways(dsn, data_dir, **GATEWAY_env)`."""
    started: list[GatewayProcess] = []

    async def start(dsn: str, data_dir: Path, **env: Any) -> GatewayProcess:
        gw = await start_gateway(dsn, fake_upstream.url, data_dir, **env)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.kill()

