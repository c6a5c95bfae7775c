"""PostgreSQL: the DSN (configured, or an embedded server from `pgserver`) and the pool."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog

from gateway.settings import DatabaseSettings

log = structlog.get_logger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL 16 server from the `pgserver` wheel, kept under `data_dir/postgres`."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir.resolve() / "postgres"
        self._server: Any = None

    def start(self) -> str:
        import pgserver  # imported lazily: only needed when no database URL is configured

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def resolve_dsn(settings: DatabaseSettings) -> tuple[str, EmbeddedPostgres | None]:
    """The configured DSN, or a freshly started embedded server's (initdb runs off the loop)."""
    if settings.url:
        return settings.url, None
    embedded = EmbeddedPostgres(settings.data_dir)
    dsn = await asyncio.to_thread(embedded.start)
    log.info("embedded_postgres_started", pgdata=str(embedded.pgdata))
    return dsn, embedded


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    # Binary jsonb codec so COPY (binary) and ordinary queries both use orjson.
    await conn.set_type_codec("jsonb", schema="pg_catalog", format="binary",
                              encoder=_encode_jsonb, decoder=_decode_jsonb)


async def create_pool(dsn: str, settings: DatabaseSettings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_s, command_timeout=30, init=init_connection,
    )
    assert pool is not None
    return pool


async def connect(dsn: str, settings: DatabaseSettings) -> asyncpg.Connection:
    """A single connection outside the pool (LISTEN, migrations from the CLI)."""
    conn = await asyncpg.connect(dsn, timeout=settings.connect_timeout_s)
    await init_connection(conn)
    return conn
