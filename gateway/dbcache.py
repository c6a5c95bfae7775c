"""`DbCache`: values read from PostgreSQL, kept in-process, invalidated by NOTIFY, and served
stale, within a bound, while the database cannot answer.

Project keys (`keystore.py`) and project credentials (`credentials.py`) are this one cache,
each with its own reader, NOTIFY channel and error.

- Fresh: an entry read while the cache LISTENs on its channel is trusted for `ttl_s` (every
  change notifies); read while the listener is down, or once it is lost, for one second.
- Stale while revalidate: past its freshness, an entry answers at once while one read per key
  refreshes it in the background. A read, pool acquire included, is given up after
  `refresh_timeout_s`. While reads fail an entry keeps answering for `stale_serve_s` past its
  freshness, and not after: then its key is treated as never seen.
- Waiting: an entry the listener's return expired waits for its read at most
  `refresh_timeout_s`, a never-seen key (nothing to fall back on) at most
  `first_read_timeout_s`; if the read fails, the entry (while within its bound) answers, else
  the owner's `unavailable` error (a 503). After a failed read no read is tried for
  `RETRY_AFTER_S` (a NOTIFY or the listener's return ends that at once), so an unreachable
  database costs a request nothing and the pool two reads a second; a connect never holds a
  request that has an entry to answer with for longer than `refresh_timeout_s`.
- Revocation: a NOTIFY drops the entries it names (the owner decides which). When the
  listener comes back after being lost, every entry must be read again before it is trusted,
  so a change made while this process could not hear counts from its next request; before
  it is back, unlistened entries are read again within a second, as soon as reads succeed.
  A read in flight when an invalidation arrives is not joined by later requests: they read
  anew.
- Read your own writes: `caught_up` after a write returns once the caches have handled its
  NOTIFY (a mark sent after it has come back), so the replica that took an admin's write
  answers by it at once; other replicas hear it within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import structlog

from gateway.db import bounded_connection
from gateway.listener import DB_ERRORS, NotifyListener

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

UNLISTENED_TTL_S = 1.0
RETRY_AFTER_S = 0.5
CATCH_UP_S = 1.0  # caught_up: past this, a cache rereads everything instead


@dataclass(frozen=True, slots=True)
class Freshness:
    """How long entries are trusted, and how long the database may take to answer."""

    ttl_s: float  # while listening
    refresh_timeout_s: float = 0.5  # waiting with an entry to fall back on
    stale_serve_s: float = 300.0
    # Waiting with nothing to fall back on (a never-seen key): a slow but healthy database
    # must not turn a first request away, so it gets longer; a failed read still makes the
    # next ones fail fast for RETRY_AFTER_S.
    first_read_timeout_s: float = 2.0
    unlistened_ttl_s: float = UNLISTENED_TTL_S


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    fresh_until: float  # answers without a read until then
    stale_until: float  # answers while reads fail until then
    must_read: bool = False  # the listener came back: read once before trusting it again


class DbCache(Generic[K, V]):
    """`get(key)`: the value `read(conn, key)` answered (None: there is none, never kept)."""

    def __init__(self, read: Callable[[asyncpg.Connection, K], Awaitable[V | None]], *,
                 name: str, freshness: Freshness,
                 unavailable: Callable[[K], Exception], max_entries: int) -> None:
        self._read = read
        self._name = name  # for log events and task names
        self._freshness = freshness
        self._unavailable = unavailable
        self._max_entries = max_entries
        self._pool: asyncpg.Pool | None = None
        self._listener: NotifyListener | None = None
        self._entries: dict[K, _Entry[V]] = {}
        self._reads: dict[K, asyncio.Task[V | None]] = {}  # one read in flight per key
        self._generation = 0  # bumped by every invalidation; guards reads racing a NOTIFY
        self._retry_at = 0.0  # after a failed read: no read before then

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.listening

    def start(self, pool: asyncpg.Pool, dsn: str, channel: str, *,
              on_notify: Callable[[str], None], connect_timeout_s: float,
              application_name: str | None = None) -> None:
        """Read through `pool`; LISTEN on `channel` on a connection of its own to `dsn`."""
        self._pool = pool

        def notified(payload: str) -> None:
            self._retry_at = 0.0  # the database just spoke: read again at once
            on_notify(payload)

        self._listener = NotifyListener(dsn, channel, name=self._name, on_notify=notified,
                                        on_state=self._on_listening,
                                        connect_timeout_s=connect_timeout_s,
                                        application_name=application_name)
        self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        reads = list(self._reads.values())
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        self._entries.clear()

    async def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is not None and not entry.must_read:
            now = time.monotonic()
            if now < entry.fresh_until:
                return entry.value
            if now < entry.stale_until:
                self._reading(key)  # refreshed in the background; this request goes on
                return entry.value
        read = self._reading(key)
        error: BaseException | None = None
        if read is not None:
            fallback = entry is not None and time.monotonic() < entry.stale_until
            fresh = self._freshness
            wait_s = fresh.refresh_timeout_s if fallback else max(fresh.refresh_timeout_s,
                                                                   fresh.first_read_timeout_s)
            done, _ = await asyncio.wait((read,), timeout=wait_s)
            if read in done and not read.cancelled():
                error = read.exception()
                if error is None:
                    return read.result()
                if not isinstance(error, DB_ERRORS):
                    raise error  # a bug, not an outage
        entry = self._entries.get(key)  # the last answer, while it may still be trusted
        if entry is not None and time.monotonic() < entry.stale_until:
            return entry.value
        raise self._unavailable(key) from error

    def drop(self, key: K) -> None:
        """Forget one entry: its next request reads the database."""
        self._invalidated()
        self._entries.pop(key, None)

    def drop_where(self, doomed: Callable[[V], bool]) -> None:
        self._invalidated()
        for key in [k for k, e in self._entries.items() if doomed(e.value)]:
            del self._entries[key]

    def expire_all(self) -> None:
        """Every entry is read again before it is trusted (kept, for when the read fails)."""
        self._invalidated()
        for entry in self._entries.values():
            entry.must_read = True

    def mark(self) -> tuple[str, str, asyncio.Future[None]] | None:
        """(channel, payload, arrived) to NOTIFY after a write: `arrived` is done once the
        payload came back, so every earlier NOTIFY has been handled. None while not
        listening. `unmark(payload)` when no longer waiting."""
        listener = self._listener
        if listener is None or not listener.listening:
            return None
        return (listener.channel, *listener.expect())

    def unmark(self, payload: str) -> None:
        if self._listener is not None:
            self._listener.forget(payload)

    def _invalidated(self) -> None:
        """Reads in flight may have seen the database before the change: what they answer is
        not kept (the generation), and requests from now on do not wait for them."""
        self._generation += 1
        self._reads.clear()  # each task still ends by itself (`_read_done`)

    def _reading(self, key: K) -> asyncio.Task[V | None] | None:
        """The read in flight for `key`, else a new one; None while reads wait out a failure."""
        read = self._reads.get(key)
        if read is None and time.monotonic() >= self._retry_at:
            read = asyncio.create_task(self._load(key), name=f"{self._name}-read")
            self._reads[key] = read
            read.add_done_callback(lambda task: self._read_done(key, task))
        return read

    def _read_done(self, key: K, task: asyncio.Task[V | None]) -> None:
        if self._reads.get(key) is task:
            del self._reads[key]
        if not task.cancelled():
            task.exception()  # retrieved: a background refresh has nobody waiting for it

    async def _load(self, key: K) -> V | None:
        assert self._pool is not None, f"{self._name}: start() was not called"
        generation = self._generation
        fresh = self._freshness
        timeout = max(fresh.refresh_timeout_s, fresh.first_read_timeout_s)  # its longest waiter
        try:
            async with bounded_connection(self._pool, timeout) as conn:
                value = await self._read(conn, key)
        except DB_ERRORS as exc:
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            log.warning(f"{self._name}_read_failed", error=f"{type(exc).__name__}: {exc}",
                        serving_stale=key in self._entries)
            raise
        self._retry_at = 0.0
        if value is None:
            self._entries.pop(key, None)  # gone from the database: gone here
        elif generation == self._generation:  # else an invalidation arrived mid-read
            self._keep(key, value)
        return value

    def _keep(self, key: K, value: V) -> None:
        fresh = self._freshness
        ttl = fresh.ttl_s if self.listening else fresh.unlistened_ttl_s
        fresh_until = time.monotonic() + ttl
        if len(self._entries) >= self._max_entries and key not in self._entries:
            self._entries.clear()
        self._entries[key] = _Entry(value, fresh_until, fresh_until + fresh.stale_serve_s)

    def _on_listening(self, listening: bool) -> None:
        if listening:  # anything cached may have missed a notification, and the database is back
            self._retry_at = 0.0
            self.expire_all()
            return
        # Lost: nothing tells us of changes now, so entries are read again within a second;
        # while those reads fail they answer for `stale_serve_s` from then.
        fresh = self._freshness
        fresh_until = time.monotonic() + fresh.unlistened_ttl_s
        for entry in self._entries.values():
            entry.fresh_until = min(entry.fresh_until, fresh_until)
            entry.stale_until = min(entry.stale_until, entry.fresh_until + fresh.stale_serve_s)


async def caught_up(pool: asyncpg.Pool, caches: Sequence[DbCache[Any, Any]],
                    wait_s: float = CATCH_UP_S) -> None:
    """Call after a write has committed: returns once each cache has handled every NOTIFY the
    write sent, by sending a mark on each listening channel and waiting for it to come back.
    A cache that cannot show that within `wait_s` (not listening, the database gone, slow)
    has every entry read again before it is trusted instead. Never raises for the database:
    the write has been made."""
    marks = {cache: cache.mark() for cache in caches}
    sent = {cache: mark for cache, mark in marks.items() if mark is not None}
    waiting = set(caches)
    try:
        if sent:
            async with bounded_connection(pool, wait_s) as conn:
                await conn.execute(
                    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS m(c, p)",
                    [channel for channel, _, _ in sent.values()],
                    [payload for _, payload, _ in sent.values()])
            await asyncio.wait([arrived for _, _, arrived in sent.values()], timeout=wait_s)
            waiting = {cache for cache in caches
                       if cache not in sent or not sent[cache][2].done()}
    except DB_ERRORS as exc:
        log.warning("caches_catch_up_failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        for cache, (_, payload, _) in sent.items():
            cache.unmark(payload)
    for cache in waiting:
        cache.expire_all()
