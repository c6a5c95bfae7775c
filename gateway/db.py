"""PostgreSQL: the DSN (configured, or an embedded server from `pgserver`), the pool,
`bounded_connection` (a pooled connection whose every wait has a bound), and
`DatabaseStart`, which brings the database up (migrated, pool filled) whenever it answers."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog

from gateway import migrate
from gateway.settings import DatabaseSettings

log = structlog.get_logger(__name__)

DB_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# PostgreSQL unreachable, refusing, gone mid-call or not answering in time (not a refused query).
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError,
                     asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)
START_BACKOFF_S = 0.2
MAX_START_BACKOFF_S = 5.0
CLOSE_TIMEOUT_S = 2.0  # DatabaseStart.close(): its cancelled attempt gets this long to end


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


# timestamptz is encoded and decoded here rather than by asyncpg's built-in codec, which for
# each value compares it with two naive "infinity" datetimes (an aware datetime asks its
# tzinfo for the offset to be compared with a naive one), converts it with `astimezone` and
# reads a timedelta's three fields: 7,100 instructions a value against 3,700 here, and each
# usage row the ledger copies holds two (bench/README.md, stop 29). The values are asyncpg's
# (tests/test_db_codecs.py holds the two to each other): an aware datetime exactly, a naive one
# as local time and a date as local midnight, `datetime.max` and `.min` (naive, or aware and
# the same instant in UTC) as PostgreSQL's infinities, which decode as those naive datetimes.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INT64 = struct.Struct("!q")
_INFINITY, _MINUS_INFINITY = 2**63 - 1, -(2**63)
_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - _PG_EPOCH) // _MICROSECOND
_MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - _PG_EPOCH) // _MICROSECOND


def _encode_timestamptz(value: Any) -> bytes:
    if type(value) is datetime and value.tzinfo is not None:  # the gateway's own: aware
        try:
            micros = (value - _PG_EPOCH) // _MICROSECOND
        except TypeError:  # a tzinfo whose utcoffset() is None: naive, in effect
            micros = _other_micros(value)
    else:
        micros = _other_micros(value)
    if not _MIN_MICROS < micros < _MAX_MICROS:
        if micros == _MAX_MICROS:
            micros = _INFINITY
        elif micros == _MIN_MICROS:
            micros = _MINUS_INFINITY
        else:  # past datetime.max or .min in UTC: asyncpg's `astimezone` overflows there
            raise OverflowError("date value out of range")
    return _INT64.pack(micros)


def _other_micros(value: Any) -> int:
    """Microseconds since 2000 UTC of anything else asyncpg takes for a timestamptz."""
    if isinstance(value, datetime):
        if value == datetime.max:  # naive (an aware datetime is never equal to a naive one)
            return _MAX_MICROS
        if value == datetime.min:
            return _MIN_MICROS
        value = value.astimezone(UTC)  # a naive datetime is local time
    elif isinstance(value, date):
        local = datetime.now(UTC).astimezone().utcoffset()
        assert local is not None
        value = datetime(value.year, value.month, value.day, tzinfo=timezone(local))
    else:
        raise TypeError("expected a datetime.date or datetime.datetime instance, got "
                        f"{type(value).__name__!r}")
    return (value - _PG_EPOCH) // _MICROSECOND


def _decode_timestamptz(data: bytes) -> datetime:
    micros: int = _INT64.unpack(data)[0]
    if micros == _INFINITY:
        return datetime.max
    if micros == _MINUS_INFINITY:
        return datetime.min
    return _PG_EPOCH + timedelta(microseconds=micros)


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    # Binary jsonb codec so COPY (binary) and ordinary queries both use orjson.
    await conn.set_type_codec("jsonb", schema="pg_catalog", format="binary",
                              encoder=_encode_jsonb, decoder=_decode_jsonb)
    await conn.set_type_codec("timestamptz", schema="pg_catalog", format="binary",
                              encoder=_encode_timestamptz, decoder=_decode_timestamptz)


async def create_pool(dsn: str, settings: DatabaseSettings) -> asyncpg.Pool:
    """A pool that connects nothing yet (`DatabaseStart` fills it to `pool_min_size`), so it
    exists, and everything built on it starts, while PostgreSQL is down."""
    pool = await asyncpg.create_pool(
        dsn, min_size=0, max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_s, command_timeout=30, init=init_connection,
    )
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def bounded_connection(pool: asyncpg.Pool, timeout_s: float
                             ) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection whose every wait ends within `timeout_s`: acquiring it, using it
    and releasing it (past it: `TimeoutError`). A connection given up on (a timeout, a lost
    connection, a cancellation) is terminated, never reset: resetting one behind a partition
    would wait out asyncpg's command timeout. One that only saw a query refused, or an error
    of the caller's own, goes back to the pool as usual."""
    async with asyncio.timeout(timeout_s) as scope:
        conn = await pool.acquire()
        # Cancelling at the deadline is not enough: a transaction block cancelled there awaits
        # its ROLLBACK, which behind a partition waits out the command timeout. So the
        # connection itself dies at the deadline, failing whatever the caller still awaits.
        deadline = scope.when()
        assert deadline is not None
        loop = asyncio.get_running_loop()
        watchdog = loop.call_at(deadline, _terminate, conn)
        try:
            yield conn
        except BaseException as exc:
            if isinstance(exc, CONNECTION_ERRORS) or not isinstance(exc, Exception):
                _terminate(conn)
            if isinstance(exc, asyncpg.InterfaceError) and loop.time() >= deadline:
                raise TimeoutError(f"no answer from PostgreSQL within {timeout_s} s") from exc
            raise
        finally:
            watchdog.cancel()
            try:
                await pool.release(conn)
            except DB_ERRORS:
                _terminate(conn)
            except asyncio.CancelledError:  # given up, but the cancellation goes on
                _terminate(conn)
                raise


def _terminate(conn: asyncpg.Connection) -> None:
    # A connection that died on its own has already gone back to the pool (closed), and its
    # proxy then refuses every call: there is nothing left to terminate.
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def close_pool(pool: asyncpg.Pool, timeout_s: float) -> None:
    """Close the pool gracefully if PostgreSQL lets it within `timeout_s`, else terminate its
    connections (closing one behind a partition waits for an answer that never comes)."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except DB_ERRORS as exc:
        log.warning("database_pool_terminated", error=type(exc).__name__, timeout_s=timeout_s)
    finally:
        pool.terminate()  # nothing left to do once it closed


async def connect(dsn: str, settings: DatabaseSettings) -> asyncpg.Connection:
    """A single connection outside the pool (LISTEN, migrations from the CLI)."""
    conn = await asyncpg.connect(dsn, timeout=settings.connect_timeout_s)
    await init_connection(conn)
    return conn


class DatabaseStart:
    """Migrates the database (when `migrate_on_start`) and fills the pool to `pool_min_size`:
    at once when PostgreSQL answers at start, else in the background, retried with backoff,
    while the gateway serves (readiness 503; calls needing the database 503). `ready` is set
    once it is done; `error` says what the last attempt met."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, settings: DatabaseSettings) -> None:
        self._pool = pool
        self._dsn = dsn
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.attempts = 0
        self.error = ""

    async def start(self) -> None:
        """One attempt now; a broken migration fails the start, an unreachable database
        leaves the rest to a background task."""
        try:
            await self._attempt()
        except DB_ERRORS as exc:
            self._failed(exc)
            log.warning("database_unavailable_at_start", error=self.error)
            self._task = asyncio.create_task(self._retry(), name="database-start")

    async def close(self) -> None:
        """Stop retrying, within CLOSE_TIMEOUT_S whatever the database does: an attempt
        still waiting past it is left to end when the pool is terminated."""
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S)
            if not done:
                log.warning("database_start_not_stopped", timeout_s=CLOSE_TIMEOUT_S)
            self._task = None

    async def _retry(self) -> None:
        delay = START_BACKOFF_S
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_START_BACKOFF_S)
            try:
                await self._attempt()
            except DB_ERRORS as exc:
                self._failed(exc)
            except migrate.MigrationError as exc:  # an operator must act; keep reporting it
                self._failed(exc)
                log.error("database_migration_failed", error=self.error)
            else:
                log.info("database_ready", attempts=self.attempts)
                return

    async def _attempt(self) -> None:
        self.attempts += 1
        settings = self._settings
        if settings.migrate_on_start:
            conn = await connect(self._dsn, settings)
            try:  # a partition mid-migration ends this attempt, not the retries
                async with asyncio.timeout(settings.migrate_timeout_s):
                    await migrate.migrate(conn, settings.migrations_dir)
            finally:
                conn.terminate()  # never waits on a database gone mid-migration
        held: list[asyncpg.pool.PoolConnectionProxy] = []
        try:
            for _ in range(min(settings.pool_min_size, settings.pool_max_size)):
                held.append(await self._pool.acquire(timeout=settings.connect_timeout_s))
        finally:
            for conn in held:
                await self._pool.release(conn)
        self.ready.set()
        self.error = ""

    def _failed(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}".strip(": ")
