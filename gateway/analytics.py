"""Analytics queries over the rollups, and the end-of-month forecast.

Ranges are answered from the rollups that triggers on `usage_records` keep exact:
`usage_daily` (one row per UTC day, project, provider and model) for whole days and
`usage_hourly` for the hours around them, so a 90-day question reads a few thousand rows,
not millions. Ranges are therefore whole hours: callers round a start down and an end up to
the hour and say so in their answers. Grouping by a metadata key is the one question only
raw rows can answer (`metadata_groups`).

Money stays exact: NUMERIC sums in SQL, Decimal in Python, added in a context wide enough
that no addition rounds, so every total equals a direct SUM over `usage_records`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

UNITS = ("hour", "day", "week", "month")
ROLLUP_KEYS = ("provider", "model", "project_id", "team_id")
ZERO = Decimal(0)
EXACT = Context(prec=1000)  # sums of NUMERIC costs never round in this context

_SUMS = """coalesce(sum({a}.requests), 0)::bigint AS requests,
    coalesce(sum({a}.errors), 0)::bigint AS errors,
    coalesce(sum({a}.input_tokens), 0)::bigint AS input_tokens,
    coalesce(sum({a}.cached_input_tokens), 0)::bigint AS cached_input_tokens,
    coalesce(sum({a}.cache_write_tokens), 0)::bigint AS cache_write_tokens,
    coalesce(sum({a}.output_tokens), 0)::bigint AS output_tokens,
    coalesce(sum({a}.cost_usd), 0) AS cost"""
_COLUMNS = """{a}.project_id, {a}.provider, {a}.model, {a}.team_id, {a}.requests, {a}.errors,
    {a}.input_tokens, {a}.cached_input_tokens, {a}.cache_write_tokens, {a}.output_tokens,
    {a}.cost_usd"""
_RAW_SUMS = """count(*) AS requests, count(*) FILTER (WHERE u.status >= 400) AS errors,
    coalesce(sum(u.input_tokens), 0)::bigint AS input_tokens,
    coalesce(sum(u.cached_input_tokens), 0)::bigint AS cached_input_tokens,
    coalesce(sum(u.cache_write_tokens), 0)::bigint AS cache_write_tokens,
    coalesce(sum(u.output_tokens), 0)::bigint AS output_tokens,
    coalesce(sum(u.cost_usd), 0) AS cost"""
# A raw row belongs to a team exactly when its rollup bucket does (the bucket keeps the
# project's team as it was when the bucket's first row arrived).
_RAW_TEAM = """EXISTS (SELECT 1 FROM usage_hourly h
    WHERE h.hour = date_trunc('hour', u.started_at, 'UTC')
      AND h.project_id = u.project_id AND h.provider = u.provider AND h.model = u.model
      AND h.team_id = ${n})"""


@dataclass(frozen=True, slots=True)
class Scope:
    """Which usage a question covers: a project key pins project_id; the admin may filter."""

    project_id: int | None = None
    team_id: int | None = None
    provider: str | None = None
    model: str | None = None

    def conditions(self, alias: str, args: list[Any], *, raw: bool = False) -> str:
        """SQL `AND ...` clauses for this scope, appending their values to `args`."""
        parts = []
        for column in ("project_id", "provider", "model"):
            value = getattr(self, column)
            if value is not None:
                args.append(value)
                parts.append(f"{alias}.{column} = ${len(args)}")
        if self.team_id is not None:
            args.append(self.team_id)
            parts.append(_RAW_TEAM.format(n=len(args)) if raw
                         else f"{alias}.team_id = ${len(args)}")
        return "".join(f" AND {part}" for part in parts)


@dataclass(slots=True)
class Totals:
    """Counts and exact cost of a set of usage rows."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = field(default=ZERO)

    def add(self, row: Any) -> None:
        self.requests += row["requests"]
        self.errors += row["errors"]
        self.input_tokens += row["input_tokens"]
        self.cached_input_tokens += row["cached_input_tokens"]
        self.cache_write_tokens += row["cache_write_tokens"]
        self.output_tokens += row["output_tokens"]
        self.cost = EXACT.add(self.cost, row["cost"])

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens  # input includes cache reads and writes

    def render(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "input_tokens": self.input_tokens,
                "cached_input_tokens": self.cached_input_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "output_tokens": self.output_tokens, "total_tokens": self.tokens,
                "cost": self.cost}


# -- time buckets, as PostgreSQL's date_trunc cuts them (weeks start on Monday) --------------

def truncate(moment: datetime, unit: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    if unit == "hour":
        return moment
    moment = moment.replace(hour=0)
    if unit == "week":
        return moment - timedelta(days=moment.weekday())
    return moment.replace(day=1) if unit == "month" else moment


def next_bucket(start: datetime, unit: str) -> datetime:
    if unit == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + {"hour": timedelta(hours=1), "day": timedelta(days=1),
                    "week": timedelta(days=7)}[unit]


def buckets(start: datetime, end: datetime, unit: str) -> Iterator[datetime]:
    """Every bucket start that overlaps [start, end)."""
    bucket = truncate(start, unit)
    while bucket < end:
        yield bucket
        bucket = next_bucket(bucket, unit)


def label(bucket: datetime, unit: str) -> str:
    """Hours as ISO date-times (UTC), longer buckets as the ISO date they start on."""
    if unit == "hour":
        return bucket.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return bucket.date().isoformat()


# -- queries ---------------------------------------------------------------------------------

def _day_bounds(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC days inside [start, end): [first, last)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first = truncate(start, "day")
    if first < start:
        first += timedelta(days=1)
    return first, truncate(end, "day")


async def rollup(conn: asyncpg.Connection, scope: Scope, start: datetime, end: datetime, *,
                 unit: str | None = None, keys: Sequence[str] = (),
                 tz: str = "UTC") -> list[Any]:
    """Sums of the rollups for hours in [start, end), grouped by a time bucket (`unit`, cut in
    time zone `tz`, answered as an aware datetime in `bucket`) and/or rollup keys.

    Whole UTC days come from usage_daily, the hours around them from usage_hourly; hourly
    buckets and other time zones read usage_hourly alone."""
    assert unit is None or unit in UNITS
    assert all(key in ROLLUP_KEYS for key in keys)
    args: list[Any] = []
    branches: list[str] = []

    def add(table: str, time: str, column: str, lo: Any, hi: Any) -> None:
        alias = column[0]
        args.extend([lo, hi])
        bounds = f"{column} >= ${len(args) - 1} AND {column} < ${len(args)}"
        where = scope.conditions(alias, args)
        branches.append(f"SELECT {time} AS t, {_COLUMNS.format(a=alias)} FROM {table} "
                        f"{alias} WHERE {bounds}{where}")

    first_day, last_day = _day_bounds(start, end)
    if tz == "UTC" and unit != "hour" and first_day < last_day:
        add("usage_daily", "d.day::timestamp", "d.day", first_day.date(), last_day.date())
        for lo, hi in ((start, first_day), (last_day, end)):
            if lo < hi:
                add("usage_hourly", "h.hour AT TIME ZONE 'UTC'", "h.hour", lo, hi)
    elif tz == "UTC":
        add("usage_hourly", "h.hour AT TIME ZONE 'UTC'", "h.hour", start, end)
    else:
        args.append(tz)
        add("usage_hourly", f"h.hour AT TIME ZONE ${len(args)}::text", "h.hour", start, end)
    select = [f"date_trunc('{unit}', x.t) AS bucket"] if unit is not None else []
    select += [f"x.{key}" for key in keys]
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(select)))}" if select else ""
    rows = await conn.fetch(
        f"SELECT {', '.join([*select, _SUMS.format(a='x')])} "
        f"FROM ({' UNION ALL '.join(branches)}) x{group}", *args)
    if unit is None:
        return list(rows)
    zone = ZoneInfo(tz)
    return [{**dict(row), "bucket": row["bucket"].replace(tzinfo=zone)} for row in rows]


async def metadata_groups(conn: asyncpg.Connection, scope: Scope, start: datetime, end: datetime,
                          key: str) -> list[Any]:
    """Sums over raw rows started in [start, end), grouped by `metadata ->> key` (None when a
    row lacks the key)."""
    args: list[Any] = [start, end, key]
    where = scope.conditions("u", args, raw=True)
    return list(await conn.fetch(
        f"SELECT u.metadata ->> $3 AS key, {_RAW_SUMS} FROM usage_records u "
        f"WHERE u.started_at >= $1 AND u.started_at < $2{where} GROUP BY 1", *args))


async def names(conn: asyncpg.Connection, table: str, ids: Sequence[int]) -> dict[int, str]:
    """Names of projects or teams by id (ids of deleted rows are simply missing)."""
    assert table in ("projects", "teams")
    rows = await conn.fetch(f"SELECT id, name FROM {table} WHERE id = ANY($1::bigint[])",
                            list(ids))
    return {row["id"]: row["name"] for row in rows}


# -- the end-of-month forecast ---------------------------------------------------------------

# Two-sided 95% Student-t quantiles by degrees of freedom (1.96 beyond the table).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
LINEAR_MIN_DAYS = 4  # fewer complete days: a flat line (the mean) instead of a trend
CENT = Decimal("0.000001")


def t95(dof: int) -> Decimal:
    fits = [q for d, q in _T95.items() if d <= dof]
    return Decimal(str(fits[-1] if dof <= 30 else 1.96))


@dataclass(frozen=True, slots=True)
class Forecast:
    current_spend: Decimal
    estimated: Decimal
    low: Decimal | None
    high: Decimal | None
    confidence: float
    days_observed: int
    method: str
    daily_trend: Decimal | None  # USD per day per day (the fitted slope)
    will_exceed: bool | None
    probability_of_exceeding: float | None
    exceeds_on: date | None


def forecast_month(daily: dict[date, Decimal], today: date, elapsed: Decimal,
                   last_day: date, budget: Decimal | None) -> Forecast:
    """Project the month's spend from its days so far.

    Method: a least-squares line through the daily spend of the complete days observed
    (from the month's first day with usage to yesterday; a flat line, their mean, with fewer
    than four), extended over the rest of today (`elapsed` is the fraction of today gone) and
    the days left, never below zero. The 95% interval combines the residual spread of the
    fit with the fit's own uncertainty (Student t on n-2 or n-1 degrees of freedom);
    confidence = 1 - half-width / estimate, clamped to [0, 1], and 0 with fewer than two
    complete days. With no complete day yet, today's spend is extrapolated over the month.
    """
    spent = exact_sum(daily.values())
    active = [d for d in sorted(daily) if d <= today]
    first = active[0] if active else today
    observed = [(float((d - first).days), daily.get(d, ZERO))
                for d in _days(first, today - timedelta(days=1))]
    n = len(observed)
    future = [(today, Decimal(1) - elapsed)] + [
        (d, Decimal(1)) for d in _days(today + timedelta(days=1), last_day)]
    x_of = {d: Decimal((d - first).days) for d, _ in future}

    slope: Decimal | None = None
    sigma: Decimal | None = None
    leverage = ZERO
    s0 = exact_sum(w for _, w in future)
    s1 = exact_sum(w * x_of[d] for d, w in future)
    ys = [y for _, y in observed]
    if n == 0:
        rate = daily.get(today, ZERO) / elapsed if elapsed > 0 else ZERO
        intercept, method = rate, "extrapolate_today"
    elif n < LINEAR_MIN_DAYS:
        intercept, method = exact_sum(ys) / n, "mean_daily"
        if n >= 2:
            sigma = (exact_sum((y - intercept) ** 2 for y in ys) / (n - 1)).sqrt()
            leverage = s0 * s0 / n
    else:
        xs = [Decimal(x) for x, _ in observed]
        sx, sxx = exact_sum(xs), exact_sum(x * x for x in xs)
        sy, sxy = exact_sum(ys), exact_sum(x * y for x, y in zip(xs, ys, strict=True))
        det = n * sxx - sx * sx
        slope = (n * sxy - sx * sy) / det
        intercept, method = (sy - slope * sx) / n, "least_squares_daily"
        residuals = [y - intercept - slope * x for x, y in zip(xs, ys, strict=True)]
        sigma = (exact_sum(r * r for r in residuals) / (n - 2)).sqrt()
        leverage = (sxx * s0 * s0 - 2 * sx * s0 * s1 + n * s1 * s1) / det

    def predict(day: date) -> Decimal:
        return max(intercept + (slope or ZERO) * x_of[day], ZERO)

    estimated = spent + exact_sum(w * predict(d) for d, w in future)
    low = high = None
    confidence = 0.0
    se: Decimal | None = None
    if sigma is not None:
        dof = n - 2 if slope is not None else n - 1
        se = (sigma * sigma * (exact_sum(w * w for _, w in future) + leverage)).sqrt()
        half = t95(dof) * se
        low, high = max(estimated - half, spent), estimated + half
        if estimated > 0:
            confidence = max(0.0, min(1.0, float(1 - half / estimated)))
        else:
            confidence = 1.0 if half == 0 else 0.0

    will_exceed = probability = exceeds_on = None
    if budget is not None:
        will_exceed = estimated > budget
        if spent > budget:
            probability = 1.0
        elif se is not None and se > 0:
            probability = 0.5 * (1 + math.erf(float((estimated - budget) / se) / math.sqrt(2)))
        elif sigma is not None:
            probability = 1.0 if will_exceed else 0.0
        exceeds_on = _crossing(daily, future, predict, budget)
    return Forecast(spent, estimated.quantize(CENT), _q(low), _q(high), round(confidence, 4),
                    n, method, _q(slope), will_exceed,
                    None if probability is None else round(probability, 4), exceeds_on)


def _crossing(daily: dict[date, Decimal], future: list[tuple[date, Decimal]],
              predict: Any, budget: Decimal) -> date | None:
    """The day cumulative spend (actual, then projected) first goes over the budget."""
    running = ZERO
    for day in sorted(daily):
        running += daily[day]
        if running > budget:
            return day
    for day, weight in future:
        running += weight * predict(day)
        if running > budget:
            return day
    return None


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def exact_sum(values: Any) -> Decimal:
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def _q(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(CENT)


async def last_usage(conn: asyncpg.Connection, scope: Scope) -> datetime | None:
    """When the newest usage row in scope started (None: no usage at all)."""
    args: list[Any] = []
    where = scope.conditions("u", args, raw=True)
    last: datetime | None = await conn.fetchval(
        f"SELECT max(u.started_at) FROM usage_records u WHERE true{where}", *args)
    return last


# -- costs paid outside the gateway (kept apart: never part of the totals above) -------------

async def manual_costs(conn: asyncpg.Connection, project_id: int | None, first: date,
                       last: date) -> list[Any]:
    """Manual costs of months `first` to `last` (first days of months), one project or all."""
    return list(await conn.fetch(
        """SELECT id, project_id, service, amount_usd, month, category, description, created_at
           FROM manual_costs WHERE month >= $1 AND month <= $2
             AND ($3::bigint IS NULL OR project_id = $3) ORDER BY month, id""",
        first, last, project_id))


async def add_manual_cost(conn: asyncpg.Connection, project_id: int, service: str,
                          amount: Decimal, month: date, category: str,
                          description: str) -> Any:
    """Record a cost paid outside the gateway for a month (its first day); answers the row."""
    return await conn.fetchrow(
        """INSERT INTO manual_costs (project_id, service, amount_usd, month, category,
               description) VALUES ($1, $2, $3, $4, $5, $6)
           RETURNING id, project_id, service, amount_usd, month, category, description,
                     created_at""", project_id, service, amount, month, category, description)
