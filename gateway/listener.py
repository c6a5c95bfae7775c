"""`NotifyListener`: PostgreSQL LISTEN on a connection of its own, kept alive.

The in-process caches (project keys, project credentials) are invalidated by NOTIFY from
triggers. A listener that has lost its connection cannot know what it missed, so its owner
is told (`on_state(False)`) and told again when listening resumes (`on_state(True)`);
owners shorten their cache lifetimes in between. The connection is re-made with backoff,
and a ping every few seconds catches a connection that died silently.

Marks: a payload starting with `MARK_PREFIX` is never passed to the owner. `expect()` gives
one to NOTIFY after a write; PostgreSQL delivers notifications in commit order, so once it has
come back every NOTIFY committed before it was sent has been handled (`dbcache.caught_up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable

import asyncpg
import structlog

log = structlog.get_logger(__name__)

PING_INTERVAL_S = 5.0
MAX_BACKOFF_S = 5.0
DB_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
MARK_PREFIX = "mark:"  # followed by a random token; other processes' marks are ignored


class NotifyListener:
    def __init__(self, dsn: str, channel: str, *, name: str,
                 on_notify: Callable[[str], None], on_state: Callable[[bool], None],
                 connect_timeout_s: float = 5.0, application_name: str | None = None) -> None:
        self._dsn = dsn
        self._channel = channel
        self._name = name  # for log events: "<name>_listening", ...
        self._on_notify = on_notify
        self._on_state = on_state
        self._connect_timeout = connect_timeout_s
        self._settings = {"application_name": application_name} if application_name else None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._marks: dict[str, asyncio.Future[None]] = {}  # payload -> done when it came back
        self.listening = False

    @property
    def channel(self) -> str:
        return self._channel

    def expect(self) -> tuple[str, asyncio.Future[None]]:
        """A payload to NOTIFY on `channel`, and a future done once it has come back here.
        `forget(payload)` when no longer waiting."""
        payload = MARK_PREFIX + secrets.token_hex(8)
        arrived = self._marks[payload] = asyncio.get_running_loop().create_future()
        return payload, arrived

    def forget(self, payload: str) -> None:
        self._marks.pop(payload, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout,
                                             server_settings=self._settings)
                await conn.add_listener(self._channel, self._notified)
                conn.add_termination_listener(self._terminated)
                self._lost = asyncio.Event()
                self.listening, delay = True, 0.1
                self._on_state(True)
                log.info(f"{self._name}_listening")
                await self._watch(conn)
                log.warning(f"{self._name}_listener_lost")
            except DB_ERRORS as exc:
                log.warning(f"{self._name}_listener_connect_failed", error=str(exc))
            finally:
                if self.listening:
                    self.listening = False
                    self._on_state(False)
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith(MARK_PREFIX):
            arrived = self._marks.pop(payload, None)
            if arrived is not None and not arrived.done():
                arrived.set_result(None)
            return
        self._on_notify(payload)

    def _terminated(self, _conn: object) -> None:
        self._lost.set()

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the listening connection is gone; a ping catches silent deaths."""
        while not self._lost.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), PING_INTERVAL_S)
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), PING_INTERVAL_S)
            except DB_ERRORS:
                return
