"""Budget leases on real PostgreSQL: many replicas, one budget, never overspent."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from conftest import with_database

from gateway import db as gwdb
from gateway.budgets import (
    SYNC_TIMEOUT_S,
    BudgetBook,
    CurrentMonth,
    Reservation,
    Shortfall,
    month_start,
)
from gateway.errors import ServiceUnavailable
from gateway.settings import DatabaseSettings
from gateway.testing.tcp_proxy import TcpProxy

UTC_ZONE = ZoneInfo("UTC")


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    await db.execute("TRUNCATE budget_periods, budget_leases")
    p = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1, pool_max_size=6))
    yield p
    await p.close()


async def _period_row(db: asyncpg.Connection) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM budget_periods WHERE scope = 'project'")


async def test_replicas_never_overspend_and_use_the_budget(
        pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    limit, cost = Decimal("0.50"), Decimal("0.01")  # room for exactly 50 calls
    books = [BudgetBook(pool, UTC_ZONE) for _ in range(3)]
    rng = random.Random(4)
    granted: list[Decimal] = []

    async def call(book: BudgetBook) -> None:
        account = book.account("project", 7, limit)
        result = await book.reserve([account], cost)
        if isinstance(result, Reservation):
            await asyncio.sleep(rng.random() / 50)
            book.settle(result, cost)
            granted.append(cost)

    await asyncio.gather(*(call(books[i % 3]) for i in range(300)))
    for book in books:
        await book.close()
    row = await _period_row(db)
    assert sum(granted) <= limit and row["spent_usd"] == sum(granted)
    assert sum(granted) >= limit * Decimal("0.9")
    assert row["leased_usd"] == 0  # every lease came back on close
    assert await db.fetchval("SELECT count(*) FROM budget_leases") == 0


async def test_a_failed_call_releases_its_reservation(pool: asyncpg.Pool,
                                                      db: asyncpg.Connection) -> None:
    book = BudgetBook(pool, UTC_ZONE)
    account = book.account("project", 1, Decimal("1"))
    first = await book.reserve([account], Decimal("0.8"))
    assert isinstance(first, Reservation)
    assert isinstance(await book.reserve([account], Decimal("0.8")), Shortfall)
    book.settle(first, Decimal(0))  # the call failed: nothing spent
    second = await book.reserve([account], Decimal("0.8"))
    assert isinstance(second, Reservation)
    book.settle(second, Decimal("0.25"))
    await book.close()
    assert (await _period_row(db))["spent_usd"] == Decimal("0.25")


async def test_shortfall_says_what_fits(pool: asyncpg.Pool) -> None:
    book = BudgetBook(pool, UTC_ZONE)
    account = book.account("project", 2, Decimal("1"))
    taken = await book.reserve([account], Decimal("0.7"))
    assert isinstance(taken, Reservation)
    short = await book.reserve([account], Decimal("0.5"))
    assert isinstance(short, Shortfall)
    assert short.limit == Decimal("1") and short.can_reserve == Decimal("0.3")
    await book.close()


async def test_a_crashed_replicas_lease_is_reclaimed_as_spent(pool: asyncpg.Pool,
                                                              db: asyncpg.Connection) -> None:
    """Only the holder knew how much of its lease it spent: reclaimed, all of it counts."""
    crashed, alive = BudgetBook(pool, UTC_ZONE), BudgetBook(pool, UTC_ZONE)
    held = await crashed.reserve([crashed.account("project", 3, Decimal("1"))], Decimal("0.9"))
    assert isinstance(held, Reservation)  # and then the process dies: no settle, no close
    survivor = alive.account("project", 3, Decimal("1"))
    assert isinstance(await alive.reserve([survivor], Decimal("0.5")), Shortfall)
    leased = await db.fetchval("SELECT amount FROM budget_leases WHERE holder = $1",
                               crashed.holder)
    await db.execute("UPDATE budget_leases SET expires_at = now() - interval '1 second' "
                     "WHERE holder = $1", crashed.holder)
    short = await alive.reserve([survivor], Decimal("0.5"))
    assert isinstance(short, Shortfall)  # never overspent: the dead lease counts as spent
    row = await db.fetchrow("SELECT spent_usd, leased_usd FROM budget_periods")
    assert row["spent_usd"] == leased and row["spent_usd"] + row["leased_usd"] <= 1
    assert await db.fetchval("SELECT amount FROM budget_reclaimed WHERE holder = $1",
                             crashed.holder) == leased
    await alive.close()


async def test_a_holder_cut_off_past_its_lease_reports_what_it_really_used(
        pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    cut, other = BudgetBook(pool, UTC_ZONE), BudgetBook(pool, UTC_ZONE)
    account = cut.account("project", 4, Decimal("1"))
    held = await cut.reserve([account], Decimal("0.9"))
    assert isinstance(held, Reservation)
    await db.execute("UPDATE budget_leases SET expires_at = now() - interval '1 second' "
                     "WHERE holder = $1", cut.holder)
    survivor = other.account("project", 4, Decimal("1"))
    assert isinstance(await other.reserve([survivor], Decimal("0.5")), Shortfall)
    cut.settle(held, Decimal("0.2"))  # the call it had in flight cost 0.2
    await cut.close()  # back in touch: reports 0.2 against the reclaimed lease
    assert await db.fetchval("SELECT spent_usd FROM budget_periods") == Decimal("0.2")
    assert await db.fetchval("SELECT count(*) FROM budget_reclaimed") == 0
    assert isinstance(await other.reserve([survivor], Decimal("0.5")), Reservation)
    await other.close()


async def test_the_budget_store_unreachable_is_503_not_500(db: asyncpg.Connection,
                                                           database_url: str) -> None:
    own = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    book = BudgetBook(own, UTC_ZONE)
    account = book.account("project", 5, Decimal("1"))
    await own.close()  # the store is gone
    with pytest.raises(ServiceUnavailable) as caught:
        await book.reserve([account], Decimal("0.1"))
    assert caught.value.code == "budget_unavailable" and caught.value.status == 503


async def test_team_and_project_are_both_held(pool: asyncpg.Pool) -> None:
    book = BudgetBook(pool, UTC_ZONE)
    team = book.account("team", 1, Decimal("1"))
    a, b = book.account("project", 10, Decimal("5")), book.account("project", 11, Decimal("5"))
    assert isinstance(await book.reserve([a, team], Decimal("0.6")), Reservation)
    short = await book.reserve([b, team], Decimal("0.6"))
    assert isinstance(short, Shortfall) and short.scope == "team"
    assert b.reserved == 0  # the project part was rolled back
    await book.close()


async def test_spend_is_reported_while_running(pool: asyncpg.Pool,
                                               db: asyncpg.Connection) -> None:
    book = BudgetBook(pool, UTC_ZONE)
    account = book.account("project", 4, Decimal("10"))
    result = await book.reserve([account], Decimal("1"))
    assert isinstance(result, Reservation)
    book.settle(result, Decimal("0.4"))
    await book.flush()
    row = await _period_row(db)
    assert row["spent_usd"] == Decimal("0.4") and row["spent_usd"] + row["leased_usd"] <= 10
    await book.close()


def test_the_current_month_is_worked_out_again_when_the_clock_leaves_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`CurrentMonth` (the hot path's month) agrees with month_start at, just before and
    just after a month's first instant in the zone, and when the clock is set back."""
    import gateway.budgets as budgets

    tokyo = ZoneInfo("Asia/Tokyo")
    current = CurrentMonth(tokyo)
    boundary = datetime(2026, 12, 1, tzinfo=tokyo).timestamp()  # 2026-11-30 15:00 UTC
    for at in (boundary - 1, boundary - 0.001, boundary, boundary + 1, boundary - 86_400 * 40,
               boundary + 86_400 * 31, boundary - 1):
        monkeypatch.setattr(budgets.time, "time", lambda at=at: at)
        expected = month_start(datetime.fromtimestamp(at, UTC), tokyo)
        assert current() == expected, datetime.fromtimestamp(at, UTC)


def test_months_follow_the_configured_zone() -> None:
    instant = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    assert month_start(instant, ZoneInfo("UTC")).isoformat() == "2026-11-01"
    assert month_start(instant, ZoneInfo("Asia/Tokyo")).isoformat() == "2026-12-01"


async def test_a_partitioned_store_answers_503_quickly_to_every_waiting_call(
        database_url: str, db: asyncpg.Connection) -> None:
    """Black-holed: the first exchange gives up after SYNC_TIMEOUT_S; the calls queued behind
    it fail at once instead of waiting one timeout each behind the budget's lock."""
    parts = urlsplit(database_url)
    proxy = TcpProxy(host=parts.hostname or "127.0.0.1", port=parts.port or 5432)
    await proxy.start()
    dsn = with_database(f"postgresql://postgres@127.0.0.1:{proxy.port}/x", parts.path[1:])
    own = await gwdb.create_pool(dsn, DatabaseSettings(pool_min_size=1))
    book = BudgetBook(own, UTC_ZONE)
    account = book.account("project", 6, Decimal("1"))
    try:
        await proxy.black_hole()
        started = time.monotonic()
        outcomes = await asyncio.gather(*(book.reserve([account], Decimal("0.1"))
                                          for _ in range(20)), return_exceptions=True)
        took = time.monotonic() - started
        assert all(isinstance(o, ServiceUnavailable) and o.code == "budget_unavailable"
                   for o in outcomes), outcomes
        assert took < SYNC_TIMEOUT_S + 1, took
        await proxy.restore()
        account.retry_at = 0.0  # a second later it is asked again, and answers
        assert isinstance(await book.reserve([account], Decimal("0.1")), Reservation)
    finally:
        await proxy.restore()
        own.terminate()
        await proxy.cut()


async def test_a_held_lease_reserves_without_waiting_and_anything_else_waits(
        pool: asyncpg.Pool) -> None:
    """`reserve_held` (the hot path) takes only what the leases in hand surely cover; for
    all else it answers None and reserves nothing, and `reserve` goes to the database."""
    book = BudgetBook(pool, UTC_ZONE)
    team = book.account("team", 7, Decimal("1"))
    project = book.account("project", 70, Decimal("1"))
    assert book.reserve_held([team, project], Decimal("0.1")) is None  # nothing leased yet
    first = await book.reserve([team, project], Decimal("0.1"))  # leases for both
    assert isinstance(first, Reservation)
    held = min(team.available, project.available)
    assert held > 0
    taken = book.reserve_held([team, project], held)
    assert isinstance(taken, Reservation) and taken.parts == [(team, held), (project, held)]
    # more than the leases hold: None, and nothing is reserved on either
    reserved = (team.reserved, project.reserved)
    assert book.reserve_held([team, project], held + Decimal("0.5")) is None
    assert (team.reserved, project.reserved) == reserved
    # a lease past its trust, or under a lowered limit, must be confirmed first
    book.settle(taken, Decimal(0))
    project.trusted_until = 0.0
    assert book.reserve_held([team, project], Decimal("0.01")) is None
    assert isinstance(await book.reserve([team, project], Decimal("0.01")), Reservation)
    book.account("project", 70, Decimal("0.5"))  # an admin lowered it
    assert project.lowered and book.reserve_held([project], Decimal("0.01")) is None
