"""Alerts from usage as it lands: a ledger batch hook that turns inserted rows into events.

`AlertHook` runs inside the transaction that inserted a batch of usage rows, so its events
(outbox rows, gateway/webhooks.py) commit or vanish with the usage they describe. Per batch it
runs one query for every project the batch touched, a second (rare) one for anomaly
baselines, and one statement that records what fired and queues the deliveries. The ledger
runs hooks in a savepoint and logs their faults: alerts never cost it a row. Since each batch
re-evaluates state rather than deltas, the next batch catches what a failed or racing one
missed.

Rules (spend is `usage_hourly.cost_usd`, exact; months follow `budgets.timezone`):

- `budget.alert`: month-to-date spend reaches a threshold percentage of the project's
  `monthly_budget_usd` (thresholds: `projects.alert_thresholds`, default 50, 80, 100). Each
  threshold fires once per project and month: `alerts_fired` has a unique key, and the insert
  that wins is the only one that queues the event, across batches and replicas.
- `usage.exceeded`, reason `budget`: once per project and month, when month-to-date spend
  reaches the budget (a budget of 0: any spend), or when the batch holds a row the gateway
  refused with 402 (a project or team budget would be overspent).
  Reason `rate_limit`: once per project and clock hour, when the batch holds a row the
  gateway refused with 429 `rate_limit_exceeded` (a provider's own 429 does not count).
- `anomaly.detected`: spend in the current UTC clock hour (so far) is at least
  `anomaly_min_spend_usd` ($1) and above max(`anomaly_multiplier` (3) x mean,
  mean + `anomaly_sigmas` (4) x standard deviation) of the project's hourly spend over the
  preceding `anomaly_baseline_hours` (168), counting hours without spend as zero, from its
  first usage in that window when that is later. Projects with less than
  `anomaly_min_history_hours` (24) of history are not judged. Once per project and hour.
- `usage.tracked` (opt-in: only endpoints that list it get it): one event per usage row,
  proxied or recorded through `POST /api/track` (a tracked row's `endpoint` is the client's
  to set, so it cannot tell the two apart); its event id is the row's request id. Rows of
  projects that no endpoint subscribes for cost nothing.

A threshold crossed by two replicas' concurrent batches that each see only part of the spend
fires at the next batch that sees all of it: late, never twice. Month sums use whole hour
buckets, so in a zone whose offset is not whole hours the bucket holding midnight counts in
the month it starts in.
"""

from __future__ import annotations

import operator
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from gateway import checks
from gateway.errors import Forbidden, NotFound
from gateway.ledger import InsertedRow
from gateway.webhooks import Event as WebhookEvent
from gateway.webhooks import WebhookSettings, encode_payload, enqueue_many

log = structlog.get_logger(__name__)

ZERO = Decimal(0)
HOUR = timedelta(hours=1)


@dataclass(slots=True)
class _Touched:
    """What one batch says about one project and budget month."""

    period_start: datetime
    period_end: datetime
    refused: int = 0  # rows refused with 402


@dataclass(slots=True)
class _Batch:
    months: dict[tuple[int, datetime], _Touched] = field(default_factory=dict)
    rate_limited: dict[int, tuple[int, datetime]] = field(default_factory=dict)  # count, hour
    late: set[int] = field(default_factory=set)  # projects with rows in closed hours


_STARTED_AT = operator.attrgetter("started_at")
_STATUS = operator.attrgetter("status")
_PROJECT_ID = operator.attrgetter("project_id")
_ODD_STATUSES = frozenset((402, 429))  # what `_summarise_each` looks at row by row


class _Candidate:
    __slots__ = ("event_type", "kind", "payload", "period", "project_id", "threshold")

    def __init__(self, project_id: int, kind: str, period: datetime, threshold: Decimal,
                 event_type: str, payload: dict[str, Any]) -> None:
        self.project_id, self.kind, self.period = project_id, kind, period
        self.threshold, self.event_type, self.payload = threshold, event_type, payload


_PROJECTS = """
    SELECT t.project_id, t.period_start, p.name, p.team_id, p.monthly_budget_usd AS budget,
           p.alert_thresholds AS thresholds,
           CASE WHEN t.need_closed THEN (
               SELECT coalesce(sum(h.cost_usd), 0) FROM usage_hourly h
               WHERE h.project_id = t.project_id AND h.hour >= t.period_start
                 AND h.hour < least(t.period_end, $5)) END AS closed,
           (SELECT coalesce(sum(h.cost_usd), 0) FROM usage_hourly h
            WHERE h.project_id = t.project_id AND h.hour >= greatest(t.period_start, $5)
              AND h.hour < t.period_end) AS live,
           (SELECT coalesce(sum(h.cost_usd), 0) FROM usage_hourly h
            WHERE h.project_id = t.project_id AND h.hour = $6) AS this_hour,
           ARRAY(SELECT f.kind || ' ' || f.threshold::text FROM alerts_fired f
                 WHERE f.project_id = t.project_id
                   AND ((f.period = t.period_start
                         AND f.kind IN ('budget.alert', 'budget.exceeded'))
                        OR (f.period = $6
                            AND f.kind IN ('anomaly.detected', 'rate_limit.exceeded'))))
               AS fired,
           EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE e.enabled AND 'usage.tracked' = ANY (e.events)
                     AND (e.project_id IS NULL OR e.project_id = t.project_id)) AS tracked
    FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::boolean[])
             AS t(project_id, period_start, period_end, need_closed)
    JOIN projects p ON p.id = t.project_id"""

_BASELINE = """
    SELECT t.project_id, min(x.hour) AS first_hour, coalesce(sum(x.c), 0) AS total,
           coalesce(sum(x.c * x.c), 0) AS total_sq
    FROM unnest($1::bigint[]) AS t(project_id)
    LEFT JOIN LATERAL (
        SELECT h.hour, sum(h.cost_usd) AS c FROM usage_hourly h
        WHERE h.project_id = t.project_id AND h.hour >= $2 AND h.hour < $3
        GROUP BY h.hour) x ON true
    GROUP BY t.project_id"""

_FIRE = """
    WITH c AS (
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::numeric[],
                             $5::uuid[], $6::text[], $7::text[])
            AS c(project_id, kind, period, threshold, event_id, event_type, payload)
    ), fired AS (
        INSERT INTO alerts_fired (project_id, kind, period, threshold, event_id, details)
        SELECT c.project_id, c.kind, c.period, c.threshold, c.event_id, c.payload::jsonb
        FROM c
        ON CONFLICT DO NOTHING
        RETURNING event_id
    ), queued AS (
        INSERT INTO webhook_outbox (event_id, event_type, project_id, payload, endpoint_id)
        SELECT c.event_id, c.event_type, c.project_id, c.payload::jsonb, e.id
        FROM c JOIN fired USING (event_id)
        JOIN webhook_endpoints e ON e.enabled AND c.event_type = ANY (e.events)
            AND (e.project_id IS NULL OR e.project_id = c.project_id)
        RETURNING 1
    )
    SELECT c.kind, count(*) AS fired, (SELECT count(*) FROM queued) AS queued
    FROM c JOIN fired USING (event_id) GROUP BY c.kind"""


@dataclass(frozen=True, slots=True)
class Baseline:
    hours: int
    mean: Decimal
    stddev: Decimal


class AlertHook:
    """The ledger batch hook: `await hook(conn, inserted_rows)` inside the batch transaction."""

    def __init__(self, settings: WebhookSettings, tz: ZoneInfo, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        self._settings = settings
        self._tz = tz
        never = datetime.max.replace(tzinfo=UTC)
        self._last_month = self._last_month_utc = (never, never)  # month_bounds' last answer
        self._clock = clock or (lambda: datetime.now(UTC))
        self._closed: dict[tuple[int, datetime], Decimal] = {}  # spend in hours < cutoff
        self._closed_cutoff: datetime | None = None
        self._baselines: dict[int, Baseline | None] = {}
        self._baseline_hour: datetime | None = None
        self.fired: Counter[str] = Counter()  # kind -> events fired by this process
        # Called once the batch that queued events has committed (the delivery worker's
        # wake-up, so deliveries leave at once instead of at its next poll).
        self.on_queued: Callable[[], None] | None = None
        self._queued = False

    async def __call__(self, conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        """Fire what these rows make due. The ledger runs each hook in a savepoint and logs
        its errors, so a fault here costs events, never usage rows."""
        if not rows:
            return
        hour = self._clock().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        cutoff = hour - HOUR  # hours before the previous one are closed: cached per hour
        batch = self._summarise(rows, cutoff)
        self._roll(hour, cutoff, batch.late)
        keys = list(batch.months)
        # Read the cache before awaiting: a concurrent call (write_now beside a flush) may
        # roll it meanwhile.
        cached = {k: self._closed.get(k) for k in keys}
        # PostgreSQL plans this statement afresh at every batch (its custom plans look
        # cheaper than the generic one), which was most of what the hook cost it: about
        # 0.3 ms of its CPU a batch, against 0.05 ms to run it. The generic plan is as good
        # here (index lookups per project); SET LOCAL ends with the batch's transaction.
        if conn.get_server_version() >= (12, 0):  # the setting is PostgreSQL 12's
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        records = await conn.fetch(
            _PROJECTS, [k[0] for k in keys], [batch.months[k].period_start for k in keys],
            [batch.months[k].period_end for k in keys], [cached[k] is None for k in keys],
            cutoff, hour)
        candidates: list[_Candidate] = []
        tracked: set[int] = set()
        judge: dict[int, asyncpg.Record] = {}
        for r in records:
            key = (r["project_id"], r["period_start"])
            closed: Decimal | None = r["closed"]
            if closed is None:
                closed = cached[key]
                assert closed is not None
            elif self._closed_cutoff == cutoff:
                self._closed[key] = closed
            fired = _fired(r["fired"])
            if r["tracked"]:
                tracked.add(r["project_id"])
            spent = closed + r["live"]
            candidates.extend(_budget_events(r, spent, fired, batch.months[key]))
            if (("anomaly.detected", ZERO) not in fired
                    and r["this_hour"] >= self._settings.anomaly_min_spend_usd
                    and r["this_hour"] > 0):
                judge[r["project_id"]] = r
            rate = batch.rate_limited.get(r["project_id"])
            if rate is not None and (rate[1] != hour
                                     or ("rate_limit.exceeded", ZERO) not in fired):
                candidates.append(_rate_event(r, *rate))
        candidates.extend(await self._anomalies(conn, judge, hour))
        await self._fire(conn, _unique(candidates))
        if tracked:
            await enqueue_many(conn, [_tracked_event(r) for r in rows if r.project_id in tracked])
        self._queued = self._queued or bool(candidates) or bool(tracked)

    def committed(self) -> None:
        """The ledger's transaction that ran this hook has committed."""
        if self._queued and self.on_queued is not None:
            self.on_queued()
        self._queued = False

    def _summarise(self, rows: Sequence[InsertedRow], cutoff: datetime) -> _Batch:
        """The batch by project and budget month, with its refusals (402), rate-limited calls
        (429) and rows in closed hours. The common batch, in one month and the open hours with
        neither status, is summed from its projects alone: row by row, this ran for every row
        of every batch at about 3,300 instructions a row."""
        started = list(map(_STARTED_AT, rows))
        first, last = min(started), max(started)
        if first >= cutoff and _ODD_STATUSES.isdisjoint(map(_STATUS, rows)):
            start, end = self.month_bounds(first)
            if last < end:
                batch = _Batch()
                for project_id in dict.fromkeys(map(_PROJECT_ID, rows)):  # in the rows' order
                    batch.months[(project_id, start)] = _Touched(start, end)
                return batch
        return self._summarise_each(rows, cutoff)

    def _summarise_each(self, rows: Sequence[InsertedRow], cutoff: datetime) -> _Batch:
        batch = _Batch()
        for row in rows:
            start, end = self.month_bounds(row.started_at)
            touched = batch.months.get((row.project_id, start))
            if touched is None:
                touched = batch.months[(row.project_id, start)] = _Touched(start, end)
            if row.status == 402:
                touched.refused += 1
            if row.status == 429 and row.error_code == "rate_limit_exceeded":
                row_hour = row.started_at.astimezone(UTC).replace(minute=0, second=0,
                                                                  microsecond=0)
                count, last = batch.rate_limited.get(row.project_id, (0, row_hour))
                batch.rate_limited[row.project_id] = (count + 1, max(last, row_hour))
            if row.started_at < cutoff:
                batch.late.add(row.project_id)
        return batch

    def _roll(self, hour: datetime, cutoff: datetime, late: Iterable[int]) -> None:
        """Drop cached sums that a new hour or late rows made stale."""
        if cutoff != self._closed_cutoff:
            self._closed.clear()
            self._closed_cutoff = cutoff
        for project_id in late:
            for key in [k for k in self._closed if k[0] == project_id]:
                del self._closed[key]
        if hour != self._baseline_hour:
            self._baselines.clear()
            self._baseline_hour = hour

    def month_bounds(self, when: datetime) -> tuple[datetime, datetime]:
        """The budget month holding `when`: its first and the next month's first midnight.
        The last answer is kept: a batch's rows are nearly all in one month. It is checked
        against its bounds in UTC: rows' times are in UTC, and two times with the same tzinfo
        compare without asking a ZoneInfo for offsets (about 0.9 us a comparison)."""
        start, end = self._last_month_utc
        if start <= when < end:
            return self._last_month
        first: date = when.astimezone(self._tz).date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        self._last_month = (datetime.combine(first, time(), self._tz),
                            datetime.combine(following, time(), self._tz))
        self._last_month_utc = (self._last_month[0].astimezone(UTC),
                                self._last_month[1].astimezone(UTC))
        return self._last_month

    async def baseline(self, conn: asyncpg.Connection, project_ids: list[int],
                       hour: datetime) -> dict[int, Baseline | None]:
        """Hourly spend statistics before `hour`; None where history is too short."""
        s = self._settings
        rows = await conn.fetch(_BASELINE, project_ids, hour - s.anomaly_baseline_hours * HOUR,
                                hour)
        out: dict[int, Baseline | None] = {}
        for r in rows:
            first: datetime | None = r["first_hour"]
            hours = 0 if first is None else int((hour - first) / HOUR)
            if hours < s.anomaly_min_history_hours:
                out[r["project_id"]] = None
                continue
            mean = r["total"] / hours
            variance = max(r["total_sq"] / hours - mean * mean, ZERO)
            out[r["project_id"]] = Baseline(hours, mean, variance.sqrt())
        return out

    async def _anomalies(self, conn: asyncpg.Connection, judge: dict[int, asyncpg.Record],
                         hour: datetime) -> list[_Candidate]:
        known = {p: self._baselines[p] for p in judge if p in self._baselines}
        missing = [p for p in judge if p not in known]
        if missing:
            fresh = await self.baseline(conn, missing, hour)
            known.update(fresh)
            if self._baseline_hour == hour:
                self._baselines.update(fresh)
        s = self._settings
        found = []
        for project_id, r in judge.items():
            base = known.get(project_id)
            if base is None:
                continue
            limit = max(s.anomaly_multiplier * base.mean,
                        base.mean + s.anomaly_sigmas * base.stddev)
            if r["this_hour"] > limit:
                found.append(_Candidate(project_id, "anomaly.detected", hour, ZERO,
                                        "anomaly.detected", {
                    "project_id": project_id, "project": r["name"], "team_id": r["team_id"],
                    "hour": hour, "current_hour_spend": r["this_hour"],
                    "baseline_mean": _round(base.mean), "baseline_stddev": _round(base.stddev),
                    "baseline_hours": base.hours, "threshold_spend": _round(limit),
                    "rule": (f"spend this hour > max({s.anomaly_multiplier} x mean, mean + "
                             f"{s.anomaly_sigmas} x stddev) of the last {base.hours} hours, "
                             f"and >= ${s.anomaly_min_spend_usd}")}))
        return found

    async def _fire(self, conn: asyncpg.Connection, candidates: list[_Candidate]) -> None:
        if not candidates:
            return
        ids = [uuid.uuid4() for _ in candidates]
        result = await conn.fetch(
            _FIRE, [c.project_id for c in candidates], [c.kind for c in candidates],
            [c.period for c in candidates], [c.threshold for c in candidates], ids,
            [c.event_type for c in candidates],
            [encode_payload({"event_id": i, **c.payload}) for i, c in zip(
                ids, candidates, strict=True)])
        for r in result:
            self.fired[r["kind"]] += r["fired"]
            log.info("alerts_fired", kind=r["kind"], fired=r["fired"], queued=r["queued"])


def _round(value: Decimal) -> Decimal:
    return value.quantize(Decimal("1e-9"))


def _percent(spent: Decimal, budget: Decimal) -> Decimal | None:
    return (spent * 100 / budget).quantize(Decimal("0.01")) if budget > 0 else None


def _fired(entries: Iterable[str]) -> set[tuple[str, Decimal]]:
    """'kind threshold' strings from the query -> (kind, threshold); 50 == 50.0 here."""
    return {(kind, Decimal(threshold)) for kind, threshold in (e.split(" ") for e in entries)}


def _budget_events(r: asyncpg.Record, spent: Decimal, fired: set[tuple[str, Decimal]],
                   touched: _Touched) -> list[_Candidate]:
    budget: Decimal | None = r["budget"]
    period = touched.period_start
    common = {"project_id": r["project_id"], "project": r["name"], "team_id": r["team_id"],
              "period": period.strftime("%Y-%m"), "period_start": period,
              "period_end": touched.period_end}
    out = []
    if budget is not None:
        for threshold in sorted(r["thresholds"]):
            crossed = spent * 100 >= threshold * budget if budget > 0 else spent > 0
            if crossed and ("budget.alert", threshold) not in fired:
                out.append(_Candidate(r["project_id"], "budget.alert", period, threshold,
                                      "budget.alert", {
                    **common, "threshold": threshold, "current_spend": spent,
                    "budget_limit": budget, "percentage_used": _percent(spent, budget)}))
    over = budget is not None and (spent >= budget if budget > 0 else spent > 0)
    if (over or touched.refused) and ("budget.exceeded", ZERO) not in fired:
        out.append(_Candidate(r["project_id"], "budget.exceeded", period, ZERO,
                              "usage.exceeded", {
            **common, "reason": "budget", "limit": budget, "current": spent,
            "percentage_used": None if budget is None else _percent(spent, budget),
            "rejected_requests": touched.refused}))
    return out


def _rate_event(r: asyncpg.Record, count: int, hour: datetime) -> _Candidate:
    return _Candidate(r["project_id"], "rate_limit.exceeded", hour, ZERO, "usage.exceeded", {
        "project_id": r["project_id"], "project": r["name"], "team_id": r["team_id"],
        "reason": "rate_limit", "rejected_requests": count, "period_start": hour,
        "period_end": hour + HOUR})


def _unique(candidates: list[_Candidate]) -> list[_Candidate]:
    seen: dict[tuple[int, str, datetime, Decimal], _Candidate] = {}
    for c in candidates:
        seen.setdefault((c.project_id, c.kind, c.period, c.threshold), c)
    # One order everywhere: replicas inserting the same keys cannot deadlock.
    return sorted(seen.values(), key=lambda c: (c.project_id, c.kind, c.period, c.threshold))


def _tracked_event(row: InsertedRow) -> WebhookEvent:
    payload = {"event_id": row.request_id, "project_id": row.project_id,
               "request_id": row.request_id, "provider": row.provider, "model": row.model,
               "endpoint": row.endpoint, "status": row.status, "error_code": row.error_code,
               "input_tokens": row.input_tokens,
               "output_tokens": row.output_tokens, "cost_usd": row.cost_usd,
               "started_at": row.started_at, "metadata": row.metadata}
    return WebhookEvent(row.request_id, "usage.tracked", row.project_id,
                        encode_payload(payload))


# -- configuration ---------------------------------------------------------------------------

MAX_THRESHOLDS = 20
MAX_THRESHOLD = Decimal(1000)


def parse_thresholds(value: Any, field_name: str = "thresholds") -> list[Decimal]:
    """A JSON list of percentages (0 < p <= 1000, at most 20) -> sorted, unique Decimals."""
    problems = checks.Problems()
    thresholds = check_thresholds(value, field_name, problems)
    problems.raise_if_any()
    return thresholds or []


def check_thresholds(value: Any, field: str, problems: checks.Problems) -> list[Decimal] | None:
    """`parse_thresholds` noting its problem in `problems` (None then) instead of raising."""
    out: set[Decimal] = set()
    for item in value if isinstance(value, list) and len(value) <= MAX_THRESHOLDS else [None]:
        number = (Decimal(str(item)) if not isinstance(item, bool)
                  and isinstance(item, int | float) else None)
        if number is None or not number.is_finite() or not ZERO < number <= MAX_THRESHOLD:
            problems.add(field, f"must be a list of at most {MAX_THRESHOLDS} percentages above "
                                f"0 and at most {MAX_THRESHOLD}, such as [50, 80, 100]")
            return None
        out.add(Decimal(int(number)) if number == number.to_integral_value() else number)
    return sorted(out)


async def set_thresholds(conn: asyncpg.Connection, project_id: int,
                         thresholds: Sequence[Decimal]) -> list[Decimal]:
    value = await conn.fetchval(
        """UPDATE projects SET alert_thresholds = $2, updated_at = now() WHERE id = $1
           RETURNING alert_thresholds""", project_id, list(thresholds))
    if value is None:
        raise NotFound(f"project {project_id} does not exist")
    return list(value)


async def alert_state(conn: asyncpg.Connection, project_id: int,
                      limit: int = 100) -> dict[str, Any]:
    """A project's thresholds, budget and latest fired alerts (newest first)."""
    row = await conn.fetchrow(
        "SELECT monthly_budget_usd, alert_thresholds FROM projects WHERE id = $1", project_id)
    if row is None:
        raise NotFound(f"project {project_id} does not exist")
    fired = await conn.fetch(
        """SELECT kind, period, threshold, event_id, fired_at FROM alerts_fired
           WHERE project_id = $1 ORDER BY fired_at DESC, kind LIMIT $2""", project_id, limit)
    return {"project_id": project_id, "monthly_budget_usd": row["monthly_budget_usd"],
            "thresholds": list(row["alert_thresholds"]),
            "fired": [{**dict(f), "event_id": str(f["event_id"])} for f in fired]}


async def set_budget(conn: asyncpg.Connection, project_id: int, limit: Decimal,
                     thresholds: Sequence[Decimal] | None, *, may_raise: bool) -> dict[str, Any]:
    """Set a project's monthly budget (and thresholds, when given) in one step. Without
    `may_raise` (a project's own key) the budget may only be set or lowered, never raised."""
    async with conn.transaction():
        current = await conn.fetchrow(
            "SELECT monthly_budget_usd FROM projects WHERE id = $1 FOR UPDATE", project_id)
        if current is None:
            raise NotFound(f"project {project_id} does not exist")
        old: Decimal | None = current["monthly_budget_usd"]
        if not may_raise and old is not None and limit > old:
            raise Forbidden(f"a project key may lower its budget but not raise it (now "
                            f"${old}); ask an admin", code="budget_raise_forbidden",
                            details={"current_limit": float(old)})
        row = await conn.fetchrow(
            """UPDATE projects SET monthly_budget_usd = $2,
                   alert_thresholds = coalesce($3, alert_thresholds), updated_at = now()
               WHERE id = $1 RETURNING monthly_budget_usd, alert_thresholds""",
            project_id, limit, None if thresholds is None else list(thresholds))
    return {"limit": row["monthly_budget_usd"], "alert_at": list(row["alert_thresholds"])}
