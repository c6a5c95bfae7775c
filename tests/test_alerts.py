"""Budget alerts, usage.exceeded, anomalies and usage.tracked from the ledger batch hook.

Rows go into usage_records (its trigger fills usage_hourly) and the hook runs in the same
transaction, as the ledger runs it. The clock is fixed mid-month so no test straddles a month.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from gateway import alerts, webhooks
from gateway import db as gwdb
from gateway.alerts import AlertHook
from gateway.domain import Usage, UsageRecord
from gateway.errors import BadRequest, Forbidden
from gateway.http.json import json_response
from gateway.ledger import InsertedRow, Ledger
from gateway.settings import DatabaseSettings, LedgerSettings
from gateway.webhooks import WebhookSettings

_TODAY = datetime.now(UTC)
NOW = datetime(_TODAY.year, _TODAY.month, 15, 12, 30, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
_RETURNING = ", ".join(InsertedRow._fields)


def make_hook(**settings: Any) -> AlertHook:
    return AlertHook(WebhookSettings(**settings), UTC_ZONE, clock=lambda: NOW)


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    await db.execute("TRUNCATE webhook_outbox, webhook_endpoints, alerts_fired")
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1,
                                                                 pool_max_size=12))
    yield pool
    await pool.close()


async def new_project(pool: asyncpg.Pool, budget: str | None = None,
                      thresholds: Iterable[int] | None = None) -> int:
    project_id: int = await pool.fetchval(
        "INSERT INTO projects (name, monthly_budget_usd) VALUES ($1, $2) RETURNING id",
        f"p-{uuid.uuid4().hex[:8]}", None if budget is None else Decimal(budget))
    if thresholds is not None:
        await pool.execute("UPDATE projects SET alert_thresholds = $2 WHERE id = $1",
                           project_id, [Decimal(t) for t in thresholds])
    return project_id


async def subscribe(pool: asyncpg.Pool, events: Iterable[str], project_id: int | None = None,
                    fmt: str = "json") -> uuid.UUID:
    async with pool.acquire() as conn:
        view, _ = await webhooks.create_endpoint(
            conn, None, project_id=project_id, url="http://127.0.0.1:9/hook", events=list(events),
            fmt=fmt, description="", enabled=True, secret=None)
    endpoint_id: uuid.UUID = view["id"]
    return endpoint_id


async def insert(conn: asyncpg.Connection, project_id: int, cost: str, *,
                 at: datetime = NOW, status: int = 200, error_code: str | None = None,
                 model: str = "gpt-4o-mini", endpoint: str = "/v1/chat/completions"
                 ) -> InsertedRow:
    row = await conn.fetchrow(
        f"""INSERT INTO usage_records (request_id, project_id, provider, model, endpoint, status,
                streamed, input_tokens, cached_input_tokens, output_tokens, usage_source,
                cost_usd, priced_by_fallback, overhead_ms, error_code, started_at, finished_at)
            VALUES ($1, $2, 'openai', $3, $4, $5, false, 10, 0, 5, 'provider', $6, false, 0.1,
                    $7, $8, $8)
            RETURNING {_RETURNING}""",
        uuid.uuid4(), project_id, model, endpoint, status, Decimal(cost), error_code, at)
    return InsertedRow(*row)


async def batch(pool: asyncpg.Pool, hook: AlertHook, project_id: int, *costs: str,
                **row: Any) -> list[InsertedRow]:
    """One ledger batch: rows inserted and the hook run, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        rows = [await insert(conn, project_id, c, **row) for c in costs]
        await hook(conn, rows)
    return rows


async def events(pool: asyncpg.Pool, event_type: str | None = None) -> list[dict[str, Any]]:
    """Queued deliveries, payloads parsed exactly (money as Decimal)."""
    rows = await pool.fetch(
        """SELECT event_id, event_type, project_id, endpoint_id, payload::text AS payload
           FROM webhook_outbox WHERE $1::text IS NULL OR event_type = $1 ORDER BY id""",
        event_type)
    return [{**dict(r), "payload": json.loads(r["payload"], parse_float=Decimal)} for r in rows]


async def test_each_threshold_fires_once_as_batches_cross_it(pool: asyncpg.Pool) -> None:
    project = await new_project(pool, budget="10")
    await subscribe(pool, ["budget.alert", "usage.exceeded"])
    hook = make_hook()
    await batch(pool, hook, project, "2", "2")  # 40%
    assert await events(pool) == []
    await batch(pool, hook, project, "1.5")  # 55%: 50 fires
    await batch(pool, hook, project, "0.5")  # 60%: nothing new
    await batch(pool, hook, project, "1", "1.5")  # 85%: 80 fires
    await batch(pool, hook, project, "0.1")
    await batch(pool, hook, project, "1.400000001")  # 100% and a nano-dollar: 100, exceeded
    await batch(pool, hook, project, "3")  # far beyond: nothing new this month
    alerts_ = await events(pool, "budget.alert")
    assert [e["payload"]["threshold"] for e in alerts_] == [50, 80, 100]
    last = alerts_[-1]["payload"]
    assert last["current_spend"] == Decimal("10.000000001")  # exact, from the rollups
    assert last["budget_limit"] == 10 and last["percentage_used"] == Decimal("100.00")
    assert last["project_id"] == project and last["period"] == NOW.strftime("%Y-%m")
    assert alerts_[0]["payload"]["current_spend"] == Decimal("5.5")
    exceeded = await events(pool, "usage.exceeded")
    assert len(exceeded) == 1
    assert exceeded[0]["payload"]["reason"] == "budget"
    assert exceeded[0]["payload"]["limit"] == 10
    assert exceeded[0]["payload"]["current"] == Decimal("10.000000001")
    # The event id in the body is the outbox event id, and alerts_fired has one row each.
    assert all(e["payload"]["event_id"] == str(e["event_id"]) for e in alerts_)
    assert await pool.fetchval("SELECT count(*) FROM alerts_fired") == 4
    assert hook.fired == {"budget.alert": 3, "budget.exceeded": 1}
    async with pool.acquire() as conn:
        state = await alerts.alert_state(conn, project)
    answer = json.loads(json_response(state).body)  # type: ignore[arg-type]
    assert [(f["kind"], f["threshold"]) for f in answer["fired"]][-1] == ("budget.alert", 50)
    assert {f["event_id"] for f in answer["fired"]} == {str(e["event_id"]) for e in
                                                        [*alerts_, *exceeded]}


async def test_one_batch_crossing_several_thresholds_fires_each(pool: asyncpg.Pool) -> None:
    project = await new_project(pool, budget="100", thresholds=[25, 50, 75, 90])
    await subscribe(pool, ["budget.alert"], project_id=project)
    await batch(pool, make_hook(), project, "80")
    assert [e["payload"]["threshold"] for e in await events(pool)] == [25, 50, 75]


async def test_racing_replicas_fire_each_threshold_once(pool: asyncpg.Pool) -> None:
    """Four replicas (hooks) on five connections write batches at once, round after round;
    however they interleave, every threshold fires exactly once."""
    project = await new_project(pool, budget="10")
    await subscribe(pool, ["budget.alert", "usage.exceeded"])
    shared = make_hook()  # one process's hook, called by two writers at once
    hooks = [shared, shared, make_hook(), make_hook(), make_hook()]
    for _ in range(6):
        await asyncio.gather(*(batch(pool, h, project, "0.5", model=f"m{i}")
                               for i, h in enumerate(hooks)))
    await batch(pool, hooks[0], project, "0.01")  # a last batch sees all the spend
    assert sorted(e["payload"]["threshold"] for e in await events(pool, "budget.alert")) \
        == [50, 80, 100]
    assert len(await events(pool, "usage.exceeded")) == 1
    assert sum(sum(h.fired.values()) for h in set(hooks)) == 4


async def test_refused_requests_fire_usage_exceeded_once(pool: asyncpg.Pool) -> None:
    project = await new_project(pool, budget="10")
    other = await new_project(pool)  # no budget of its own: its team's refused it
    await subscribe(pool, ["usage.exceeded"])
    hook = make_hook()
    await batch(pool, hook, project, "1")
    assert await events(pool) == []
    await batch(pool, hook, project, "0", "0", status=402, error_code="budget_exceeded")
    await batch(pool, hook, project, "0", status=402, error_code="budget_exceeded")
    await batch(pool, hook, other, "0", status=402, error_code="budget_exceeded")
    found = await events(pool)
    assert [(e["project_id"], e["payload"]["reason"], e["payload"]["rejected_requests"])
            for e in found] == [(project, "budget", 2), (other, "budget", 1)]
    assert found[0]["payload"]["current"] == 1 and found[1]["payload"]["limit"] is None


async def test_rate_limited_requests_fire_once_per_hour(pool: asyncpg.Pool) -> None:
    project = await new_project(pool)
    await subscribe(pool, ["usage.exceeded"])
    hook = make_hook()
    await batch(pool, hook, project, "0", status=429, error_code="upstream_error")
    assert await events(pool) == []  # the provider's 429, not the gateway's limit
    await batch(pool, hook, project, "0", "0", status=429, error_code="rate_limit_exceeded")
    await batch(pool, hook, project, "0", status=429, error_code="rate_limit_exceeded")
    later = NOW + timedelta(hours=1)
    next_hour = AlertHook(WebhookSettings(), UTC_ZONE, clock=lambda: later)
    await batch(pool, next_hour, project, "0", status=429, error_code="rate_limit_exceeded",
                at=later)
    found = await events(pool)
    assert [(e["payload"]["reason"], e["payload"]["rejected_requests"]) for e in found] \
        == [("rate_limit", 2), ("rate_limit", 1)]
    assert found[0]["payload"]["period_start"] == NOW.replace(minute=0).isoformat()


async def history(pool: asyncpg.Pool, project_id: int, hours: int,
                  cost_of_hour: Any) -> None:
    """Past spend, written straight to usage_records (no hook: it is history)."""
    hour = NOW.replace(minute=0)
    async with pool.acquire() as conn, conn.transaction():
        for h in range(1, hours + 1):
            await insert(conn, project_id, cost_of_hour(h), at=hour - timedelta(hours=h))


async def test_anomaly_fires_on_a_spike_and_not_on_steady_spend(pool: asyncpg.Pool) -> None:
    steady, spiky, young = [await new_project(pool) for _ in range(3)]
    await subscribe(pool, ["anomaly.detected"])
    wobble = ("1.6", "2.4", "2.0", "1.8", "2.2")
    for project in (steady, spiky):
        await history(pool, project, 50, lambda h: wobble[h % 5])  # mean $2, sigma $0.28
    await history(pool, young, 6, lambda h: "0.1")
    hook = make_hook()
    await batch(pool, hook, steady, "1.2", "1.1")  # $2.30 this hour: ordinary
    await batch(pool, hook, young, "40")  # 6 hours of history: not judged
    await batch(pool, hook, spiky, "3", "3")  # $6.00: limit is 3 x $2 = $6, not above it
    assert await events(pool) == []
    await batch(pool, hook, spiky, "0.5")  # $6.50: above
    await batch(pool, hook, spiky, "20")  # same hour: not again
    found = await events(pool)
    assert len(found) == 1 and found[0]["project_id"] == spiky
    payload = found[0]["payload"]
    assert payload["current_hour_spend"] == Decimal("6.5")
    assert payload["baseline_mean"] == 2 and payload["baseline_hours"] == 50
    assert payload["threshold_spend"] == 6
    assert payload["hour"] == NOW.replace(minute=0).isoformat()
    # A quiet project with a tiny baseline: 10x its mean, but under the $1 minimum.
    tiny = await new_project(pool)
    await history(pool, tiny, 48, lambda h: "0.05")
    await batch(pool, hook, tiny, "0.9")
    assert len(await events(pool)) == 1


async def test_anomaly_rule_uses_the_spread_of_noisy_history(pool: asyncpg.Pool) -> None:
    """mean + 4 sigma beats 3 x mean when spend swings: a swing inside it is no anomaly."""
    project = await new_project(pool)
    await subscribe(pool, ["anomaly.detected"])
    await history(pool, project, 48, lambda h: "10" if h % 2 else "0")  # mean 5, sigma 5
    hook = make_hook()
    await batch(pool, hook, project, "24")  # > 3 x 5 but < 5 + 4 x 5 = 25
    assert await events(pool) == []
    await batch(pool, hook, project, "1.5")
    assert len(await events(pool, "anomaly.detected")) == 1


async def test_late_rows_refresh_the_cached_month(pool: asyncpg.Pool) -> None:
    """Spend of closed hours is cached per hour; a row arriving late for one is counted."""
    project = await new_project(pool, budget="10")
    await subscribe(pool, ["budget.alert"])
    hook = make_hook()
    await batch(pool, hook, project, "4")
    await batch(pool, hook, project, "2", at=NOW - timedelta(hours=5))  # replayed from spill
    assert [e["payload"]["current_spend"] for e in await events(pool)] == [6]


async def test_usage_tracked_only_for_subscribers(pool: asyncpg.Pool) -> None:
    project, quiet = await new_project(pool), await new_project(pool)
    alerts_only = await subscribe(pool, ["budget.alert"])
    tracked = await subscribe(pool, ["usage.tracked"], project_id=project)
    hook = make_hook()
    rows = await batch(pool, hook, project, "0.25", "0.5", endpoint="/api/track")
    await batch(pool, hook, quiet, "1", endpoint="/api/track")
    found = await events(pool)
    assert {e["endpoint_id"] for e in found} == {tracked} and alerts_only not in {
        e["endpoint_id"] for e in found}
    assert [e["event_id"] for e in found] == [r.request_id for r in rows]
    assert found[1]["payload"]["cost_usd"] == Decimal("0.5")
    assert found[1]["payload"]["endpoint"] == "/api/track"


async def test_through_the_ledger(pool: asyncpg.Pool, tmp_path: Any) -> None:
    """Ledger.write_now runs the hook in its transaction: the event commits with the row."""
    project = await new_project(pool, budget="1")
    await subscribe(pool, ["budget.alert", "usage.tracked"])
    ledger = Ledger(pool, LedgerSettings(flush_interval_s=0.05), hooks=[make_hook()],
                    spill_dir=tmp_path)
    await ledger.start()
    record = UsageRecord(
        request_id=uuid.uuid4(), project_id=project, api_key_id=None,  # type: ignore[arg-type]
        provider="openai", model="gpt-4o-mini", endpoint="/api/track", status=200,
        streamed=False, usage=Usage(10, 0, 5), cost_usd=Decimal("0.6"),
        priced_by_fallback=False, price_model=None, overhead_ms=0.0, upstream_ms=None,
        error_code=None, metadata={"feature": "chat"}, started_at=NOW, finished_at=NOW)
    try:
        assert await ledger.write_now(record)
        assert not await ledger.write_now(record)  # a replay adds no row and no event
    finally:
        await ledger.close(deadline_s=5)
    found = await events(pool)
    assert [e["event_type"] for e in found] == ["budget.alert", "usage.tracked"]
    assert found[1]["event_id"] == record.request_id
    assert found[1]["payload"]["metadata"] == {"feature": "chat"}


async def test_thresholds_and_budgets_are_validated_and_stored(pool: asyncpg.Pool) -> None:
    assert alerts.parse_thresholds([100, 50, 80.5, 50]) == [50, Decimal("80.5"), 100]
    for bad in ([0], [1001], ["50"], [True], list(range(1, 23)), "50"):
        with pytest.raises(BadRequest):
            alerts.parse_thresholds(bad)
    project = await new_project(pool, budget="10")
    async with pool.acquire() as conn:
        assert await alerts.set_thresholds(conn, project, [Decimal(90)]) == [90]
        with pytest.raises(Forbidden):
            await alerts.set_budget(conn, project, Decimal(20), None, may_raise=False)
        lowered = await alerts.set_budget(conn, project, Decimal(5), [Decimal(60)],
                                          may_raise=False)
        assert lowered == {"limit": 5, "alert_at": [60]}
        raised = await alerts.set_budget(conn, project, Decimal(50), None, may_raise=True)
        assert raised == {"limit": 50, "alert_at": [60]}
        state = await alerts.alert_state(conn, project)
    assert state["thresholds"] == [60] and state["fired"] == []


async def test_the_hooks_plan_setting_ends_with_its_batch(pool: asyncpg.Pool) -> None:
    """The hook's statement runs on a generic plan (planned afresh at every batch it cost
    PostgreSQL more than running it), set for the batch's transaction only: the pooled
    connection's other statements keep PostgreSQL's own choice."""
    project = await new_project(pool, budget="10")
    hook = make_hook()
    async with pool.acquire() as conn:
        before = await conn.fetchval("SELECT current_setting('plan_cache_mode')")
        async with conn.transaction():
            await hook(conn, [await insert(conn, project, "1")])
            during = await conn.fetchval("SELECT current_setting('plan_cache_mode')")
        after = await conn.fetchval("SELECT current_setting('plan_cache_mode')")
    assert (before, during, after) == ("auto", "force_generic_plan", "auto")


def _inserted_row(project_id: int, at: datetime, status: int = 200,
                  error_code: str | None = None) -> InsertedRow:
    return InsertedRow(uuid.uuid4(), project_id, "openai", "gpt-4o-mini", "/v1/chat/completions",
                       status, error_code, 10, 5, Decimal("0.001"), at, {}, "proxy")


@pytest.mark.parametrize("case", ["plain", "refused", "rate_limited", "late", "two_months",
                                  "zone_month"])
def test_a_batch_summed_by_projects_equals_one_summed_row_by_row(case: str) -> None:
    """`_summarise` sums the common batch from its projects alone; whatever the batch, its
    summary is the one a row-by-row pass makes (the refusals, the 429s, the late rows and the
    budget months all counted)."""
    tz = ZoneInfo("America/New_York") if case == "zone_month" else UTC_ZONE
    hook = AlertHook(WebhookSettings(), tz, clock=lambda: NOW)
    cutoff = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    rows = [_inserted_row(p, NOW - timedelta(minutes=m)) for p in (3, 1, 2) for m in (1, 5, 9)]
    if case == "refused":
        rows.append(_inserted_row(1, NOW, 402, "budget_exceeded"))
    elif case == "rate_limited":
        rows.append(_inserted_row(2, NOW, 429, "rate_limit_exceeded"))
    elif case == "late":
        rows.append(_inserted_row(3, cutoff - timedelta(minutes=1)))
    elif case == "two_months":
        rows.append(_inserted_row(1, NOW.replace(day=1) - timedelta(days=2)))
    elif case == "zone_month":  # 04:30 UTC on the 1st is still last month in New York
        first = NOW.replace(day=1, hour=5, minute=30)
        cutoff = first - timedelta(hours=2)
        rows = [_inserted_row(1, first), _inserted_row(2, first - timedelta(hours=1))]
    summary = hook._summarise(rows, cutoff)
    assert summary == AlertHook(WebhookSettings(), tz)._summarise_each(rows, cutoff)
    assert list(summary.months) == list(dict.fromkeys(
        (r.project_id, hook.month_bounds(r.started_at)[0]) for r in rows))
    if case == "plain":
        assert not summary.late and not summary.rate_limited
        assert all(t.refused == 0 for t in summary.months.values())
    if case == "zone_month":  # the two rows fall in two budget months of New York
        assert len({start for _, start in summary.months}) == 2
