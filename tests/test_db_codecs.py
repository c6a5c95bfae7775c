"""The gateway's timestamptz codec (`gateway.db`) gives what asyncpg's built-in one gives."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from gateway import db as gwdb


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: Python then treats its datetimes as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


class _Stamp(datetime):
    pass


VALUES = [
    datetime(2026, 12, 5, 19, 38, 13, 123456, tzinfo=UTC),
    datetime(2026, 12, 5, 19, 38, 13, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("America/New_York")),
    datetime(2026, 1, 1, 12, 0, tzinfo=ZoneInfo("America/New_York")),
    datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 3, 10, 2, 30),  # naive: local time, in a DST gap in New York
    datetime(2024, 11, 3, 1, 30),  # naive, in New York's repeated hour
    date(2024, 3, 10),
    datetime.max,
    datetime.min,
    datetime.max.replace(tzinfo=UTC),
    datetime.min.replace(tzinfo=UTC),
    datetime.max.replace(tzinfo=timezone(timedelta(hours=1))),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=_NoOffset()),
    _Stamp(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
]


@pytest.fixture(params=["UTC", "America/New_York"])
async def pair(request: pytest.FixtureRequest, database_url: str,
               monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """(asyncpg's codec, the gateway's), with the process in a local time zone."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    builtin = await asyncpg.connect(database_url)
    ours = await asyncpg.connect(database_url)
    await gwdb.init_connection(ours)
    try:
        yield builtin, ours
    finally:
        await builtin.close()
        await ours.close()
        monkeypatch.undo()
        time.tzset()


def _same(value: object) -> tuple[object, object]:
    """A value with its time zone, so that a naive and an aware datetime never compare equal."""
    return value, getattr(value, "tzinfo", None)


@pytest.mark.parametrize("value", VALUES, ids=repr)
async def test_a_value_is_stored_and_read_back_as_asyncpg_does(
        pair: tuple[asyncpg.Connection, asyncpg.Connection], value: datetime) -> None:
    builtin, ours = pair
    query = "SELECT $1::timestamptz::text, $1::timestamptz, ARRAY[$1, $1]::timestamptz[]"
    want, got = await builtin.fetchrow(query, value), await ours.fetchrow(query, value)
    assert got[0] == want[0]
    assert _same(got[1]) == _same(want[1])
    assert [_same(v) for v in got[2]] == [_same(v) for v in want[2]]


async def test_what_postgresql_holds_is_read_as_asyncpg_reads_it(
        pair: tuple[asyncpg.Connection, asyncpg.Connection]) -> None:
    builtin, ours = pair
    query = ("SELECT 'infinity'::timestamptz, '-infinity'::timestamptz, "
             "'0001-01-01 00:00:00+00'::timestamptz, '9999-12-31 23:59:59.999999+00'::timestamptz,"
             " '2000-01-01 00:00:00+00'::timestamptz, '1999-12-31 23:59:59.5+00'::timestamptz, "
             "ARRAY['infinity', NULL, '2026-12-05 01:02:03.000004+00']::timestamptz[]")
    want, got = await builtin.fetchrow(query), await ours.fetchrow(query)
    assert [_same(v) for v in got[:6]] == [_same(v) for v in want[:6]]
    assert [_same(v) for v in got[6]] == [_same(v) for v in want[6]]
    refused = []
    for conn in pair:  # past Python's datetime
        with pytest.raises(OverflowError) as error:
            await conn.fetchval("SELECT '10000-01-01 00:00:00+00'::timestamptz")
        refused.append(str(error.value))
    assert refused[0] == refused[1]


@pytest.mark.parametrize("value", [
    "2026-12-05", datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2))),
    datetime(1, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))], ids=repr)
async def test_a_value_asyncpg_refuses_is_refused_alike(
        pair: tuple[asyncpg.Connection, asyncpg.Connection], value: object) -> None:
    """Not a date, or an instant outside Python's datetimes in UTC."""
    errors = []
    for conn in pair:
        with pytest.raises(asyncpg.DataError) as refused:
            await conn.fetchval("SELECT $1::timestamptz", value)
        errors.append(str(refused.value))
    assert errors[0] == errors[1]
