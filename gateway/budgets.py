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

Spend recorded through `POST /api/track` did not pass through a lease: `TrackedSpendHook`
adds it to the budgets it falls under in the ledger's own transaction, and NOTIFY tells every
process holding a lease on such a budget to hand back what it has not reserved, so its next
call leases against the new spend (and is refused once the budget is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from gateway.db import bounded_connection
from gateway.errors import ServiceUnavailable
from gateway.ledger import InsertedRow
from gateway.listener import NotifyListener

log = structlog.get_logger(__name__)

ZERO = Decimal(0)
LEASE_TTL_S = 30.0
# A lease is used only this long after it was last confirmed: by then another process may
# reclaim it (counting it as spent), so serving from it longer could overspend.
LEASE_TRUST_S = LEASE_TTL_S - 5.0
RENEW_AFTER_S = LEASE_TTL_S / 3  # a held lease is confirmed again this often
SYNC_TIMEOUT_S = 2.0  # every exchange with the database, connection included
RETRY_AFTER_FAILURE_S = 1.0  # after a failed exchange, calls that need one fail at once
SYNC_INTERVAL_S = 1.0
IDLE_RETURN_S = 10.0
CHUNK_SECONDS = 5.0  # lease about this many seconds of recent spend at a time
FIRST_CHUNK_REQUESTS = 4  # with no spend history, room for this many such requests
NOTICE_CHANNEL = "gateway_budget_spend"  # payload: "<scope>:<scope_id>:<period>"
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


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
    trusted_until: float = 0.0  # monotonic time until which the lease may be spent from
    synced_at: float = 0.0      # monotonic time of the last successful exchange
    retry_at: float = 0.0       # after a failed exchange: no new one before this
    lowered: bool = False       # the limit went down: hand the lease back before using it
    last_activity: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def available(self) -> Decimal:
        return self.leased - self.used - self.reserved

    def covers(self, amount: Decimal, now: float) -> bool:
        """The lease holds `amount` and may be spent from at monotonic time `now`, with
        nothing to confirm with the database first."""
        return self.available >= amount and now < self.trusted_until and not self.lowered


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


def _unavailable(account: Account) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the {account.scope} budget cannot be checked right now (its store is unreachable); "
        "retry shortly", code="budget_unavailable", headers={"Retry-After": "1"})


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip(": ")


def month_start(now: datetime, tz: ZoneInfo) -> date:
    return now.astimezone(tz).date().replace(day=1)


class CurrentMonth:
    """`month_start` of now, worked out again only when the clock leaves the month it
    answered last (every call on the hot path otherwise builds two datetimes)."""

    def __init__(self, tz: ZoneInfo) -> None:
        self._tz = tz
        self._month = date.min
        self._from = self._until = 0.0  # the month's bounds, as epoch seconds

    def __call__(self) -> date:
        now = time.time()
        if not self._from <= now < self._until:
            local = datetime.fromtimestamp(now, self._tz)
            self._month = local.date().replace(day=1)
            following = (self._month.replace(year=self._month.year + 1, month=1)
                         if self._month.month == 12 else
                         self._month.replace(month=self._month.month + 1))
            self._from = datetime.combine(self._month, datetime.min.time(),
                                          self._tz).timestamp()
            self._until = datetime.combine(following, datetime.min.time(),
                                           self._tz).timestamp()
        return self._month


class BudgetBook:
    def __init__(self, pool: asyncpg.Pool, tz: ZoneInfo, *, dsn: str | None = None,
                 connect_timeout_s: float = 5.0) -> None:
        """With `dsn`, listen for spend recorded outside the leases (tracked spend)."""
        self._pool = pool
        self._tz = tz
        self._month = CurrentMonth(tz)
        self._holder = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self._accounts: dict[tuple[str, int, date], Account] = {}
        self._task: asyncio.Task[None] | None = None
        self._listener = (NotifyListener(dsn, NOTICE_CHANNEL, name="budgets",
                                         on_notify=self._on_notice, on_state=lambda _: None,
                                         connect_timeout_s=connect_timeout_s)
                          if dsn is not None else None)
        self._handing_back: set[asyncio.Task[None]] = set()
        self.notices = 0  # spend notices handled (tests wait on `noticed`)
        self.noticed = asyncio.Event()

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def accounts(self) -> tuple[Account, ...]:
        return tuple(self._accounts.values())

    def account(self, scope: str, scope_id: int, limit: Decimal,
                now: datetime | None = None) -> Account:
        period = self._month() if now is None else month_start(now, self._tz)
        key = (scope, scope_id, period)
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = Account(scope, scope_id, period, limit)
        if limit < account.limit:  # what we hold may be more than the new limit leaves
            account.lowered = True
        account.limit = limit  # an admin may have changed it
        return account

    def reserve_held(self, accounts: list[Account], amount: Decimal) -> Reservation | None:
        """`reserve` when every account's lease holds `amount` and may be spent from, with
        nothing to wait for (the common case); None when any would need the database."""
        now = time.monotonic()
        for account in accounts:
            if not account.covers(amount, now):
                return None
        for account in accounts:
            account.reserved += amount
        return Reservation([(account, amount) for account in accounts])

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

    async def exhausted(self, accounts: list[Account]) -> Shortfall | None:
        """The first account whose budget is spent (its reported spend and ours reach the
        limit), as last seen within the lease's trust (refreshed when older); else None."""
        for account in accounts:
            if time.monotonic() >= account.trusted_until:
                await self._refresh(account)
            if account.spent + account.used >= account.limit:
                return Shortfall(account.scope, account.scope_id, account.limit,
                                 account.spent + account.used, ZERO)
        return None

    async def _refresh(self, account: Account) -> None:
        """Report our spend and learn the budget's (503 `budget_unavailable` if the store
        cannot answer)."""
        async with account.lock:
            now = time.monotonic()
            if now < account.trusted_until:
                return  # refreshed while we waited
            if now < account.retry_at:
                raise _unavailable(account)
            await self._sync_or_unavailable(account)

    async def _sync_or_unavailable(self, account: Account, *, want: Decimal = ZERO,
                                   need: Decimal = ZERO, give_back: bool = False) -> None:
        """`_sync`, or 503 `budget_unavailable` (no new try for a moment) if it fails."""
        try:
            await self._sync(account, want=want, need=need, give_back=give_back)
        except DB_ERRORS as exc:
            account.retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S
            log.warning("budget_unavailable", scope=account.scope,
                        scope_id=account.scope_id, error=_describe(exc))
            raise _unavailable(account) from None

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
        if account.covers(amount, time.monotonic()):
            account.reserved += amount
            return True
        async with account.lock:  # one lease request at a time per budget
            if account.lowered:  # lease again under the new limit, from what is left of it
                if time.monotonic() < account.retry_at:
                    raise _unavailable(account)
                await self._sync_or_unavailable(account, give_back=True)
                account.lowered = False
            now = time.monotonic()
            if account.available < amount or now >= account.trusted_until:
                if now < account.retry_at:  # the store just failed: do not queue behind it
                    raise _unavailable(account)
                need = max(amount - account.available, ZERO)
                chunk = Decimal(account.rate * CHUNK_SECONDS).quantize(Decimal("1e-9"))
                want = max(need, chunk, amount * FIRST_CHUNK_REQUESTS) if need else ZERO
                await self._sync_or_unavailable(account, want=want, need=need)
            if account.available >= amount:
                account.reserved += amount
                account.last_activity = time.monotonic()
                return True
            return False

    async def _sync(self, account: Account, *, want: Decimal = ZERO, need: Decimal = ZERO,
                    give_back: bool = False) -> None:
        used = account.used
        returned = max(account.available, ZERO) if give_back else ZERO
        started = time.monotonic()
        async with bounded_connection(self._pool, SYNC_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "SELECT * FROM budget_sync($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                account.scope, account.scope_id, account.period, self._holder, account.limit,
                used, returned, want, need, LEASE_TTL_S, account.reserved)
        account.used -= used
        if row["reclaimed"]:  # our old lease was counted as spent; this is all we hold now
            log.warning("budget_lease_was_reclaimed", scope=account.scope,
                        scope_id=account.scope_id, reported=str(used))
            account.leased = row["granted"]
        else:
            account.leased += row["granted"] - used - returned
        account.spent, account.free = row["spent"], row["free"]
        account.synced_at, account.trusted_until = started, started + LEASE_TRUST_S

    # -- spend recorded outside the leases --------------------------------------------

    async def hand_back(self, scope: str, scope_id: int, period: date | None = None) -> None:
        """Spend was added to this budget behind the leases' back: report ours and return
        the unreserved part of our lease, so the next reservation leases against the new
        spend. Nothing to do without an account here."""
        period = period or self._month()
        account = self._accounts.get((scope, scope_id, period))
        if account is None:
            return
        async with account.lock:
            await self._sync(account, give_back=True)

    def _on_notice(self, payload: str) -> None:
        scope, _, rest = payload.partition(":")
        scope_id, _, period = rest.partition(":")
        try:
            key = (scope, int(scope_id), date.fromisoformat(period))
        except ValueError:
            log.warning("budget_notice_unreadable", payload=payload)
            return
        task = asyncio.create_task(self._handle_notice(*key), name="budget-notice")
        self._handing_back.add(task)
        task.add_done_callback(self._handing_back.discard)

    async def _handle_notice(self, scope: str, scope_id: int, period: date) -> None:
        try:
            await self.hand_back(scope, scope_id, period)
        except DB_ERRORS as exc:  # the lease runs out on its own; the next sync sees the spend
            log.warning("budget_hand_back_failed", scope=scope, scope_id=scope_id,
                        error=str(exc))
        self.notices += 1
        self.noticed.set()

    # -- background reporting ----------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="budget-sync")
        if self._listener is not None:
            self._listener.start()

    async def close(self, deadline_s: float = SYNC_TIMEOUT_S) -> None:
        """Report all spend and return every lease (SIGTERM, shutdown), within `deadline_s`
        (and each exchange within SYNC_TIMEOUT_S)."""
        if self._listener is not None:
            await self._listener.close()
        for task in list(self._handing_back):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        results = await asyncio.gather(
            *(asyncio.wait_for(self._give_back(a), min(deadline_s, SYNC_TIMEOUT_S))
              for a in self._accounts.values()), return_exceptions=True)
        for account, result in zip(list(self._accounts.values()), results, strict=True):
            if isinstance(result, BaseException):
                # Not lost: the lease expires and is reclaimed as spent, all of it.
                log.error("budget_report_failed_on_close", scope=account.scope,
                          scope_id=account.scope_id, unreported=str(account.used),
                          leased=str(account.leased), error=_describe(result))

    async def _give_back(self, account: Account) -> None:
        async with account.lock:
            await self._sync(account, give_back=True)

    async def flush(self) -> None:
        """Report spend now; give back idle leases; forget finished months."""
        now = time.monotonic()
        current = self._month()
        for key, account in list(self._accounts.items()):
            idle = now - account.last_activity > IDLE_RETURN_S and account.reserved == 0
            renew = account.leased and now - account.synced_at > RENEW_AFTER_S
            if account.used or (idle and account.leased) or renew or account.period < current:
                async with account.lock:
                    await self._sync(account, give_back=idle or account.period < current)
            if account.period < current and account.reserved == 0:
                del self._accounts[key]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                await self.flush()
            except DB_ERRORS as exc:
                log.warning("budget_sync_failed", error=_describe(exc))


# Tracked spend, grouped by project and month, added to the project's budget and its team's
# (those that have one), in one order so concurrent batches cannot deadlock.
_ADD_TRACKED = """
WITH spend AS (
    SELECT * FROM unnest($1::bigint[], $2::date[], $3::numeric[]) AS s (project_id, period, amount)
), scoped AS (
    SELECT 'project' AS scope, p.id AS scope_id, s.period, p.monthly_budget_usd AS limit_usd,
           s.amount
    FROM spend s JOIN projects p ON p.id = s.project_id WHERE p.monthly_budget_usd IS NOT NULL
    UNION ALL
    SELECT 'team', t.id, s.period, t.monthly_budget_usd, s.amount
    FROM spend s JOIN projects p ON p.id = s.project_id JOIN teams t ON t.id = p.team_id
    WHERE t.monthly_budget_usd IS NOT NULL
)
INSERT INTO budget_periods AS b (scope, scope_id, period, limit_usd, spent_usd)
SELECT scope, scope_id, period, max(limit_usd), sum(amount) FROM scoped
GROUP BY scope, scope_id, period ORDER BY scope, scope_id, period
ON CONFLICT (scope, scope_id, period) DO UPDATE
    SET spent_usd = b.spent_usd + EXCLUDED.spent_usd, updated_at = now()
RETURNING b.scope, b.scope_id, b.period
"""


_ORIGIN = operator.attrgetter("origin")


class TrackedSpendHook:
    """Ledger batch hook: tracked rows (`origin = 'track'`) count against the budgets of their
    project and its team, in the batch's transaction (a replayed row is not inserted twice,
    so it is not counted twice); the processes holding leases on them are told on commit."""

    def __init__(self, tz: ZoneInfo) -> None:
        self._tz = tz

    @staticmethod
    def counts(row: InsertedRow) -> bool:
        """A tracked row with a cost: what this hook adds to the budgets."""
        return row.origin == "track" and row.cost_usd > 0

    @classmethod
    def wants(cls, rows: Sequence[InsertedRow]) -> bool:
        """Whether the batch holds a row to count (most hold only proxied ones, which the
        origins alone show, without a call a row)."""
        return "track" in map(_ORIGIN, rows) and any(map(cls.counts, rows))

    async def __call__(self, conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        spend: dict[tuple[int, date], Decimal] = {}
        for row in rows:
            if self.counts(row):
                key = (row.project_id, month_start(row.started_at, self._tz))
                spend[key] = spend.get(key, ZERO) + row.cost_usd
        if not spend:
            return
        keys = sorted(spend)
        touched = await conn.fetch(_ADD_TRACKED, [k[0] for k in keys], [k[1] for k in keys],
                                   [spend[k] for k in keys])
        if touched:  # NOTIFY is delivered on commit, and only then
            await conn.execute("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n",
                               NOTICE_CHANNEL,
                               [f"{r['scope']}:{r['scope_id']}:{r['period'].isoformat()}"
                                for r in touched])
