"""Project keys, cached in-process and invalidated across replicas by PostgreSQL NOTIFY.

A cached key is trusted for `ttl` seconds while this process is listening on the
`gateway_auth` channel (every change to a key, project or team notifies it, from a trigger);
while the listener is down, entries live one second, so a revoked key stops working on every
replica within a second either way.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

import asyncpg
import structlog

from gateway import projects
from gateway.domain import Principal, Project
from gateway.errors import Unauthorized
from gateway.listener import NotifyListener

log = structlog.get_logger(__name__)

CHANNEL = "gateway_auth"
UNLISTENED_TTL_S = 1.0
MAX_ENTRIES = 100_000


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
        self._ttl = ttl_s
        self._connect_timeout = connect_timeout_s
        self._cache: dict[str, _Entry | None] = {}
        self._inflight: dict[str, asyncio.Future[_Entry | None]] = {}
        self._generation = 0  # bumped by every invalidation; guards fetches racing a NOTIFY
        self._listener = NotifyListener(dsn, CHANNEL, name="keystore", on_notify=self.invalidate,
                                        on_state=self._on_listening,
                                        connect_timeout_s=connect_timeout_s)

    @property
    def listening(self) -> bool:
        return self._listener.listening

    async def start(self) -> None:
        self._listener.start()

    async def close(self) -> None:
        await self._listener.close()

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
                ttl = self._ttl if self.listening else UNLISTENED_TTL_S
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

    def _on_listening(self, listening: bool) -> None:
        if listening:  # anything cached before may have missed a notification
            self._cache.clear()
            self._generation += 1
