"""Deletes expired rows of one table in bounded batches, in the background, off the hot path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import structlog

log = structlog.get_logger(__name__)


class ExpirySweeper:
    """`poke()` on every call; at most once per `interval_s` it starts one background batch.

    `table` and `key` are identifiers from this package's own code, never user input.
    """

    def __init__(self, pool: asyncpg.Pool, table: str, key: str, *, interval_s: float = 30.0,
                 batch: int = 1000, timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # SKIP LOCKED: replicas sweeping at once share the work instead of queueing.
        self._sql = (f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
                     f"WHERE expires_at < now() LIMIT {int(batch)} FOR UPDATE SKIP LOCKED)")
        self._pool = pool
        self._interval_s = interval_s
        self._batch = batch
        self._timeout_s = timeout_s
        self._clock = clock
        self._due = clock() + interval_s
        self._task: asyncio.Task[int] | None = None

    def poke(self) -> None:
        if self._clock() < self._due or (self._task is not None and not self._task.done()):
            return
        self._due = self._clock() + self._interval_s
        self._task = asyncio.create_task(self._sweep_quietly())

    async def sweep(self) -> int:
        """Delete one batch of expired rows; answer how many."""
        status = await self._pool.execute(self._sql, timeout=self._timeout_s)
        deleted = int(status.split()[-1])
        if deleted >= self._batch:
            self._due = self._clock()  # more are waiting: the next poke sweeps again
        return deleted

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _sweep_quietly(self) -> int:
        try:
            return await self.sweep()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("expiry_sweep_failed", error=f"{type(exc).__name__}: {exc}")
            return 0
