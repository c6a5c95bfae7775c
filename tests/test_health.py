"""Health probes answer the seed's schema; readiness follows PostgreSQL and draining."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from aiohttp.test_utils import TestClient
from conftest import SettingsFactory, with_database

from gateway import SERVICE_NAME
from gateway.app import build_app
from gateway.keys import READINESS
from gateway.testing.tcp_proxy import TcpProxy


def _check_shape(data: dict, status: str) -> None:
    assert data["service"] == SERVICE_NAME and data["status"] == status
    assert datetime.fromisoformat(data["checkedAt"].replace("Z", "+00:00"))


async def test_live(gateway: TestClient) -> None:
    resp = await gateway.get("/api/health/live")
    assert resp.status == 200
    data = await resp.json()
    assert set(data) == {"ok", "service", "status", "checkedAt"} and data["ok"] is True
    _check_shape(data, "live")


async def test_ready_and_draining(gateway: TestClient) -> None:
    resp = await gateway.get("/api/health/ready")
    assert resp.status == 200
    data = await resp.json()
    assert set(data) == {"ok", "service", "status", "checks", "checkedAt"}
    assert data["ok"] is True and data["checks"]["database"]["ok"] is True
    _check_shape(data, "ready")
    gateway.app[READINESS].draining = True
    resp = await gateway.get("/api/health/ready")
    assert resp.status == 503
    data = await resp.json()
    assert data["ok"] is False and data["checks"]["draining"] is True
    _check_shape(data, "not_ready")


async def test_ready_is_503_while_postgres_is_unreachable(
        aiohttp_client, make_settings: SettingsFactory, database_url: str) -> None:
    parts = urlsplit(database_url)
    if parts.hostname:
        proxy = TcpProxy(host=parts.hostname, port=parts.port or 5432)
    else:  # embedded server: a Unix socket directory in ?host=
        socket_dir = parts.query.split("host=", 1)[1].split("&")[0]
        proxy = TcpProxy(unix_path=f"{socket_dir}/.s.PGSQL.5432")
    await proxy.start()
    name = parts.path.lstrip("/")
    dsn = with_database(f"postgresql://postgres@127.0.0.1:{proxy.port}/x", name)
    client = await aiohttp_client(build_app(make_settings(database={"url": dsn})))
    try:
        assert (await client.get("/api/health/ready")).status == 200
        await proxy.cut()
        resp = await client.get("/api/health/ready")
        assert resp.status == 503
        data = await resp.json()
        assert data["checks"]["database"]["ok"] is False and data["checks"]["database"]["error"]
        _check_shape(data, "not_ready")
        assert (await client.get("/api/health/live")).status == 200  # alive all the same
        await proxy.restore()
        statuses = []
        for _ in range(3):  # the pool replaces its broken connections
            statuses.append((await client.get("/api/health/ready")).status)
        assert statuses[-1] == 200
    finally:
        await proxy.cut()
