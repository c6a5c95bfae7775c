"""Importing one integration's reports over a range of days: a chunk of days at a time,
each chunk stored in one transaction with the cursor, so a failure resumes after the last
chunk stored; a finished import is then reconciled and its mismatches raised."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import aiohttp
import asyncpg
import structlog

from gateway.db import bounded_connection
from gateway.pricing import PriceTable
from gateway.settings import SyncSettings
from gateway.sync import anthropic_admin, openai_admin, report, store
from gateway.sync.client import AdminApiError
from gateway.sync.records import CostRow, Integration, UsageRow

log = structlog.get_logger(__name__)

Fetch = Callable[..., Awaitable[tuple[list[UsageRow], list[CostRow]]]]
FETCHERS: dict[str, Fetch] = {"openai": openai_admin.fetch, "anthropic": anthropic_admin.fetch}
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_REPORT_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


@dataclass(frozen=True, slots=True)
class Outcome:
    integration: Integration
    status: str  # ok | error
    records: int
    start: date
    end: date
    resumed_from: date | None = None
    error: str | None = None
    mismatched_days: tuple[date, ...] = ()

    def view(self) -> dict[str, Any]:
        return {"provider": self.integration.provider, "account": self.integration.account,
                "status": self.status, "records": self.records,
                "start_date": self.start.isoformat(), "end_date": self.end.isoformat(),
                "resumed_from": self.resumed_from.isoformat() if self.resumed_from else None,
                "error": self.error,
                "mismatched_days": [d.isoformat() for d in self.mismatched_days]}


def resume_point(state: asyncpg.Record | None, start: date, end: date) -> date | None:
    """Where an import of start..end picks up: after the cursor of an earlier run of the
    same range (or one reaching past it) that failed; None to start at `start`."""
    if state is None or state["state"] not in ("error", "running") or state["cursor"] is None:
        return None
    if state["run_start"] is None or state["run_start"] > start or state["cursor"] >= end:
        return None
    if state["cursor"] < start:
        return None
    return state["cursor"] + timedelta(days=1)


async def import_range(pool: asyncpg.Pool, session: aiohttp.ClientSession,
                       integration: Integration, start: date, end: date,
                       settings: SyncSettings, prices: PriceTable, *,
                       force: bool = False) -> Outcome:
    """Import start..end (resuming an earlier failed run unless `force`), then reconcile."""
    def connection() -> AbstractAsyncContextManager[asyncpg.Connection]:
        # Bounded: a partitioned database fails the import instead of hanging it.
        return bounded_connection(pool, settings.timeout_s)

    async with connection() as conn:
        state = await store.load_state(conn, integration.account, integration.provider)
        resumed = None if force else resume_point(state, start, end)
        cursor = None if resumed is None else resumed - timedelta(days=1)
        await store.begin_run(conn, integration, start, end, cursor)
    fetch = FETCHERS[integration.provider]
    records = 0
    chunk_start = resumed or start
    try:
        while chunk_start <= end:
            chunk_end = min(chunk_start + timedelta(days=settings.chunk_days - 1), end)
            usage, costs = await fetch(session, integration, chunk_start, chunk_end,
                                       timeout_s=settings.timeout_s)
            async with connection() as conn:
                records += await store.replace_days(conn, integration, chunk_start, chunk_end,
                                                    usage, costs)
            chunk_start = chunk_end + timedelta(days=1)
    except (AdminApiError, *_REPORT_ERRORS, *_DB_ERRORS) as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, _REPORT_ERRORS):  # a report not in the documented shape
            message = f"a malformed {integration.provider} report: {type(exc).__name__}: {exc}"
        log.warning("sync_failed", provider=integration.provider, account=integration.account,
                    error=message, next_day=chunk_start.isoformat())
        async with connection() as conn:
            await store.finish_run(conn, integration, message)
        return Outcome(integration, "error", records, start, end, resumed, message)
    async with connection() as conn:
        await store.finish_run(conn, integration, None)
        table = await report.build(conn, prices, settings, integration.account,
                                   integration.provider, start, end)
        raised = await report.raise_mismatches(conn, table, settings)
    log.info("sync_finished", provider=integration.provider, account=integration.account,
             records=records, mismatched_days=len(raised))
    return Outcome(integration, "ok", records, start, end, resumed, None, tuple(raised))
