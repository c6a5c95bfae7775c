"""Project keys, cached in-process and invalidated across replicas by PostgreSQL NOTIFY.

A cached key is trusted for `ttl` seconds while this process is listening on the
`gateway_auth` channel (every change to a key, project or team notifies it, from a trigger);
while the listener is down, entries live one second, so a revoked key stops working on every
replica within a second either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from dataclasses import dataclass

import asyncpg
import structlog

from gateway import projects
from gateway.domain import Principal, Project
from gateway.errors import Unauthorized

log = structlog.get_logger(__name__)

CHANNEL = "gateway_auth"
UNLISTENED_TTL_S = 1.0
MAX_ENTRIES = 100_000
PING_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class _Entry:
    key_id: int
    key_hash: bytes
    revoked: bool
    project: Project
    expires: float


class KeyStore:
    def __init__(self, pool: asyncpg.Pool, dsn: str, *, ttl_s: float,
                 connect_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._dsn = dsn
        self._ttl = ttl_s
        self._connect_timeout = connect_timeout_s
        self._cache: dict[str, _Entry | None] = {}
        self._inflight: dict[str, asyncio.Future[_Entry | None]] = {}
        self._generation = 0  # bumped by every invalidation; guards fetches racing a NOTIFY
        self._listening = False
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._listening

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="keystore-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def authenticate(self, key: str) -> Principal:
        prefix = projects.split_key(key)
        if prefix is None:
            raise Unauthorized("malformed API key: expected gw_<prefix>_<secret>")
        entry = self._cache.get(prefix)
        if entry is None or entry.expires < time.monotonic():
            entry = await self._load(prefix)
        if entry is None or not hmac.compare_digest(projects.hash_key(key), entry.key_hash):
            raise Unauthorized("invalid API key")
        if entry.revoked:
            raise Unauthorized("this API key has been revoked", code="revoked_api_key")
        return Principal(entry.key_id, prefix, entry.project)

    async def _load(self, prefix: str) -> _Entry | None:
        pending = self._inflight.get(prefix)
        if pending is not None:  # one query per prefix however many requests wait for it
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry | None] = asyncio.get_running_loop().create_future()
        self._inflight[prefix] = future
        generation = self._generation
        try:
            async with self._pool.acquire() as conn:
                found = await projects.find_key(conn, prefix)
            entry = None
            if found is not None:
                ttl = self._ttl if self._listening else UNLISTENED_TTL_S
                if generation != self._generation:
                    ttl = 0.0  # an invalidation arrived mid-query: use it once, never cache it
                entry = _Entry(*found, expires=time.monotonic() + ttl)
                if len(self._cache) >= MAX_ENTRIES:
                    self._cache.clear()
                self._cache[prefix] = entry
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved when nobody else waits
            raise
        finally:
            del self._inflight[prefix]

    def invalidate(self, payload: str) -> None:
        self._generation += 1
        kind, _, ident = payload.partition(":")
        if kind == "key":
            self._cache.pop(ident, None)
        elif kind == "project" and ident.isdigit():
            project_id = int(ident)
            for prefix, entry in list(self._cache.items()):
                if entry is None or entry.project.id == project_id:
                    del self._cache[prefix]
        else:
            self._cache.clear()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.invalidate(payload)

    def _on_terminate(self, _conn: object) -> None:
        self._lost.set()

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                await conn.add_listener(CHANNEL, self._on_notify)
                conn.add_termination_listener(self._on_terminate)
                self._listener, self._lost = conn, asyncio.Event()
                self._cache.clear()  # anything cached before may have missed a notification
                self._generation += 1
                self._listening, delay = True, 0.1
                log.info("keystore_listening")
                await self._watch(conn)
                log.warning("keystore_listener_lost")
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("keystore_listener_connect_failed", error=str(exc))
            finally:
                self._listening = False
                if self._listener is not None:
                    self._listener.terminate()
                    self._listener = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the listening connection is gone; a ping catches silent deaths."""
        while not self._lost.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), PING_INTERVAL_S)
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), PING_INTERVAL_S)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return
