"""The background loop stops when closed, even when a cancellation is absorbed on its way
(as releasing a pooled connection in db.bounded_connection does)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import date
from typing import Any, cast

from gateway.settings import SyncSettings
from gateway.sync.importer import Outcome
from gateway.sync.scheduler import SyncRunner


class AbsorbingRunner(SyncRunner):
    """Every sync absorbs the first cancellation that reaches it, then carries on."""

    def __init__(self) -> None:
        super().__init__(cast(Any, None), "", SyncSettings(interval_s=0.01), cast(Any, None),
                         None, connect_timeout_s=1)
        self.syncs = 0
        self.absorbed = 0
        self.started = asyncio.Event()

    async def sync(self, providers: Iterable[str] | None = None, start: date | None = None,
                   end: date | None = None, *, force: bool = False) -> list[Outcome]:
        self.syncs += 1
        self.started.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.absorbed += 1
        return []


async def test_close_stops_a_loop_that_absorbed_a_cancellation() -> None:
    runner = AbsorbingRunner()
    runner.start()
    await asyncio.wait_for(runner.started.wait(), 5)
    await asyncio.wait_for(runner.close(), 5)
    assert runner.absorbed >= 1
    syncs = runner.syncs
    await asyncio.sleep(0.1)
    assert runner.syncs == syncs  # nothing runs after close
    await runner.close()  # closing twice is harmless
