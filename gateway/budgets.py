"""Monthly budgets that cannot be overspent, without a database round trip per request.

Each process leases budget from PostgreSQL in chunks (`budget_sync()` in migration 0004,
under a row lock: spent + leased <= limit always holds) and reserves each request's
worst-case cost from its lease in memory. After the call the reservation is replaced by
the actual cost; the spend is reported back every second, idle leases are returned, and
everything is returned on shutdown. A process that dies stops renewing its lease, and
the others reclaim it when it expires.

Chunks follow the recent spend rate, so a busy process asks rarely and a quiet one holds
little; near the limit a process leases only what the request in hand needs, so the
budget is used to the end and never beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
import structlog

log = structlog.get_logger(__name__)

ZERO = Decimal(0)
LEASE_TTL_S = 30.0
SYNC_INTERVAL_S = 1.0
IDLE_RETURN_S = 10.0
CHUNK_SECONDS = 5.0  # lease about this many seconds of recent spend at a time
FIRST_CHUNK_REQUESTS = 4  # with no spend history, room for this many such requests


@dataclass(slots=True)
class Account:
    """This process's share of one budget in one month."""

    scope: str
    scope_id: int
    period: date
    limit: Decimal
    leased: Decimal = ZERO    # granted to this process, not yet reported (includes used)
    used: Decimal = ZERO      # settled spend not yet reported
    reserved: Decimal = ZERO  # worst cases of calls in flight
    spent: Decimal = ZERO     # the budget's reported spend, as last seen
    free: Decimal = ZERO      # unleased budget, as last seen
    rate: float = 0.0         # recent spend, USD per second (moving average)
    last_activity: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def available(self) -> Decimal:
        return self.leased - self.used - self.reserved


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a reservation did not fit: for the 402 answer and for clamping."""

    scope: str
    scope_id: int
    limit: Decimal
    spent: Decimal
    can_reserve: Decimal  # the most this process could reserve right now


@dataclass(slots=True)
class Reservation:
    parts: list[tuple[Account, Decimal]]
    settled: bool = False


def month_start(now: datetime, tz: ZoneInfo) -> date:
    return now.astimezone(tz).date().replace(day=1)


class BudgetBook:
    def __init__(self, pool: asyncpg.Pool, tz: ZoneInfo) -> None:
        self._pool = pool
        self._tz = tz
        self._holder = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self._accounts: dict[tuple[str, int, date], Account] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def accounts(self) -> tuple[Account, ...]:
        return tuple(self._accounts.values())

    def account(self, scope: str, scope_id: int, limit: Decimal,
                now: datetime | None = None) -> Account:
        period = month_start(now or datetime.now(self._tz), self._tz)
        key = (scope, scope_id, period)
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = Account(scope, scope_id, period, limit)
        account.limit = limit  # an admin may have changed it
        return account

    async def reserve(self, accounts: list[Account],
                      amount: Decimal) -> Reservation | Shortfall:
        """Reserve `amount` on every account, or on none (answering the first shortfall)."""
        done: list[tuple[Account, Decimal]] = []
        for account in accounts:
            if not await self._reserve_one(account, amount):
                for taken, value in done:
                    taken.reserved -= value
                return Shortfall(account.scope, account.scope_id, account.limit,
                                 account.spent + account.used,
                                 max(account.available + account.free, ZERO))
            done.append((account, amount))
        return Reservation(done)

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Replace the reservation by what the call actually cost (0 if it failed)."""
        if reservation.settled:
            return
        reservation.settled = True
        now = time.monotonic()
        for account, amount in reservation.parts:
            account.reserved -= amount
            account.used += actual
            elapsed = max(now - account.last_activity, 1e-3)
            account.rate = 0.9 * account.rate + 0.1 * float(actual) / elapsed
            account.last_activity = now

    async def _reserve_one(self, account: Account, amount: Decimal) -> bool:
        if account.available >= amount:
            account.reserved += amount
            return True
        async with account.lock:  # one lease request at a time per budget
            if account.available < amount:
                need = amount - account.available
                chunk = Decimal(account.rate * CHUNK_SECONDS).quantize(Decimal("1e-9"))
                want = max(need, chunk, amount * FIRST_CHUNK_REQUESTS)
                await self._sync(account, want=want, need=need)
            if account.available >= amount:
                account.reserved += amount
                account.last_activity = time.monotonic()
                return True
            return False

    async def _sync(self, account: Account, *, want: Decimal = ZERO, need: Decimal = ZERO,
                    give_back: bool = False) -> None:
        used = account.used
        returned = max(account.available, ZERO) if give_back else ZERO
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM budget_sync($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                account.scope, account.scope_id, account.period, self._holder, account.limit,
                used, returned, want, need, LEASE_TTL_S)
        account.used -= used
        account.leased += row["granted"] - used - returned
        account.spent, account.free = row["spent"], row["free"]

    # -- background reporting ----------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="budget-sync")

    async def close(self) -> None:
        """Report all spend and return every lease (SIGTERM, shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for account in list(self._accounts.values()):
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._sync(account, give_back=True)

    async def flush(self) -> None:
        """Report spend now; give back idle leases; forget finished months."""
        now = time.monotonic()
        current = month_start(datetime.now(self._tz), self._tz)
        for key, account in list(self._accounts.items()):
            idle = now - account.last_activity > IDLE_RETURN_S and account.reserved == 0
            if account.used or (idle and account.leased) or account.period < current:
                async with account.lock:
                    await self._sync(account, give_back=idle or account.period < current)
            if account.period < current and account.reserved == 0:
                del self._accounts[key]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("budget_sync_failed", error=str(exc))
