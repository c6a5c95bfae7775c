"""Running the sync: one replica at a time (a PostgreSQL advisory lock held on a connection
of its own for the whole sync), every `sync.interval_s` in the background for the last
`sync.days` days, and on demand (`POST /api/sync`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, date, datetime, timedelta

import aiohttp
import asyncpg
import structlog

from gateway.credentials import SecretBox
from gateway.db import bounded_connection
from gateway.pricing import PriceTable
from gateway.settings import SyncSettings
from gateway.sync import integrations
from gateway.sync.importer import Outcome, import_range
from gateway.sync.records import Integration

log = structlog.get_logger(__name__)

LOCK_KEY = 0x6761_7465_7379_6E63 & 0x7FFF_FFFF_FFFF_FFFF  # "gatesync", one per database
LOCK_APPLICATION = "gateway-sync-lock"
FIRST_SYNC_DELAY_S = 5.0
CANCEL_RETRY_S = 0.5
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class SyncBusy(Exception):
    """Another replica (or this one) is running the sync now."""


@contextlib.asynccontextmanager
async def advisory_lock(dsn: str, connect_timeout_s: float) -> AsyncIterator[None]:
    """Hold the sync's advisory lock for the block, on a connection of its own (a pooled
    one could go back to the pool still holding it); SyncBusy when another holds it. A
    replica that dies loses its connection, and the lock with it."""
    conn = await asyncpg.connect(dsn, timeout=connect_timeout_s,
                                 server_settings={"application_name": LOCK_APPLICATION})
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            raise SyncBusy("a sync is already running")
        try:
            yield
        finally:
            with contextlib.suppress(*_DB_ERRORS):
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        with contextlib.suppress(*_DB_ERRORS):
            await conn.close(timeout=connect_timeout_s)


async def lock_held(conn: asyncpg.Connection) -> bool:
    """Whether some session holds the sync's lock now (a bigint key shows in pg_locks as
    classid, the high half, and objid, the low half, with objsubid 1)."""
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2)""",
        LOCK_KEY >> 32, LOCK_KEY & 0xFFFF_FFFF))


def last_days(settings: SyncSettings, today: date | None = None) -> tuple[date, date]:
    today = today or datetime.now(UTC).date()
    return today - timedelta(days=settings.days - 1), today


class SyncRunner:
    """Every integration imported in turn under the advisory lock."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, settings: SyncSettings,
                 prices: PriceTable, box: SecretBox | None, connect_timeout_s: float,
                 query_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._dsn = dsn
        self._settings = settings
        self._prices = prices
        self._box = box
        self._connect_timeout = connect_timeout_s
        self._query_timeout = query_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_queued: Callable[[], None] | None = None  # webhook events were queued
        self.skipped = 0  # background turns skipped: another sync held the lock
        self._stopping = False

    @property
    def settings(self) -> SyncSettings:
        return self._settings

    @property
    def box(self) -> SecretBox | None:
        return self._box

    def pool_connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A pooled connection for reads (status, reconciliation), bounded like a handler's."""
        return bounded_connection(self._pool, self._query_timeout)

    async def integrations(self) -> list[Integration]:
        async with self.pool_connection() as conn:
            found, _ = await integrations.stored(conn, self._box, self._settings)
        return integrations.configured(self._settings) + found

    async def sync(self, providers: Iterable[str] | None = None, start: date | None = None,
                   end: date | None = None, *, force: bool = False) -> list[Outcome]:
        """Import start..end (default: the last `sync.days` days) for every integration of
        `providers` (default: all). SyncBusy while another sync runs."""
        default_start, default_end = last_days(self._settings)
        start, end = start or default_start, end or default_end
        wanted = None if providers is None else set(providers)
        chosen = [i for i in await self.integrations()
                  if wanted is None or i.provider in wanted]
        if not chosen:
            return []
        async with advisory_lock(self._dsn, self._connect_timeout):
            session = self._session or aiohttp.ClientSession()
            try:
                outcomes = [await import_range(self._pool, session, i, start, end,
                                               self._settings, self._prices, force=force)
                            for i in chosen]
                if self.on_queued is not None and any(o.mismatched_days for o in outcomes):
                    self.on_queued()
                return outcomes
            finally:
                if session is not self._session:
                    await session.close()

    def start(self) -> None:
        """The background loop: a sync soon after the start, then one every `interval_s`."""
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop(), name="gateway-sync")

    async def _loop(self) -> None:
        # A moment first: the process finishes starting (and its database comes up).
        await asyncio.sleep(min(self._settings.interval_s, FIRST_SYNC_DELAY_S))
        while not self._stopping:
            try:
                await self.sync()
            except SyncBusy:
                self.skipped += 1
                log.info("sync_skipped", reason="another replica is syncing")
            except _DB_ERRORS as exc:
                log.warning("sync_unavailable", error=str(exc) or type(exc).__name__)
            except Exception:  # a bug must not end the background sync for good
                log.exception("sync_crashed")
            await asyncio.sleep(self._settings.interval_s)

    async def close(self) -> None:
        """Stop the background loop (a sync in flight is cancelled: it resumes next time)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            # Cancelled again until it ends: a cancellation that lands while a pooled
            # connection is being released is absorbed there (db.bounded_connection), and
            # the loop would otherwise carry on.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_RETRY_S)
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
