"""Reconciliation end to end: a month of traffic through the gateway, the providers' admin
APIs faked from that ledger plus spend made around the gateway and a wrong price, imported
over HTTP (paged, idempotent, resumable, one replica at a time) and reconciled."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, GatewayFactory, admin_headers, create_project

from gateway import webhooks
from gateway.keys import SYNC
from gateway.testing.fake_admin import AdminState, ProviderPrice, Spend, start_fake_admin

D = Decimal
OPENAI_ADMIN_KEY = "sk-admin-test-0123456789"
ANTHROPIC_ADMIN_KEY = "sk-ant-admin01-test-0123456789"
SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18",
             "claude-sonnet-4-5": "claude-sonnet-4-5-20250929"}
# What the providers bill: OpenAI as prices.toml says; Anthropic 10% above it, so the
# gateway's price for claude-sonnet-4-5 is 10% too low.
PROVIDER_PRICES = {
    "gpt-4o-mini-2024-07-18": ProviderPrice(input=D("0.15"), cache_read=D("0.075"),
                                            output=D("0.60")),
    "claude-sonnet-4-5-20250929": ProviderPrice(input=D("3.30"), cache_read=D("0.33"),
                                                output=D("16.5"), cache_write_5m=D("4.125")),
}
EXTRA = D("0.03")  # spend made around the gateway
PROMPT = " ".join(f"word{i}" for i in range(600))


@pytest.fixture
async def admin_api() -> AsyncIterator[tuple[AdminState, str]]:
    state = AdminState(admin_keys={"openai": OPENAI_ADMIN_KEY,
                                   "anthropic": ANTHROPIC_ADMIN_KEY},
                       prices=dict(PROVIDER_PRICES), page_size=3)
    runner, url = await start_fake_admin(state)
    yield state, url
    await runner.cleanup()


def sync_settings(url: str, **extra: Any) -> dict[str, Any]:
    return {"enabled": False, "openai_admin_key": OPENAI_ADMIN_KEY,
            "anthropic_admin_key": ANTHROPIC_ADMIN_KEY, "openai_base_url": f"{url}/v1",
            "anthropic_base_url": url, "settle_hours": 0, "chunk_days": 7, **extra}


def month() -> list[date]:
    today = datetime.now(UTC).date()
    return [today - timedelta(days=30 - i) for i in range(30)]  # the 30 days before today


async def send_traffic(gw: TestClient, fake_upstream: FakeUpstream, key: str,
                       days: list[date], db: asyncpg.Connection) -> None:
    """One OpenAI and one Anthropic call per day through the gateway (some with cache
    reads and writes), then each row moved to its day."""
    for i in range(len(days)):
        fake_upstream.script({"reply_tokens": 200 + i, "cached_tokens": 100 if i % 3 else 0})
        resp = await gw.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "gpt-4o-mini", "max_tokens": 400,
                                   "messages": [{"role": "user", "content": PROMPT}]})
        assert resp.status == 200, await resp.text()
        fake_upstream.script({"reply_tokens": 150 + i, "cached_tokens": 50 if i % 2 else 0,
                              "cache_write_tokens": 40 if i % 4 == 0 else 0})
        resp = await gw.post("/v1/messages", headers={"x-api-key": key,
                                                      "anthropic-version": "2023-06-01"},
                             json={"model": "claude-sonnet-4-5", "max_tokens": 400,
                                   "messages": [{"role": "user", "content": PROMPT}]})
        assert resp.status == 200, await resp.text()
    deadline = asyncio.get_running_loop().time() + 10
    while await db.fetchval("SELECT count(*) FROM usage_records") < 2 * len(days):
        assert asyncio.get_running_loop().time() < deadline, "the ledger did not flush"
        await asyncio.sleep(0.02)
    ids = await db.fetch("SELECT request_id, provider FROM usage_records ORDER BY started_at")
    counters: dict[str, int] = defaultdict(int)
    for row in ids:
        day = days[counters[row["provider"]]]
        counters[row["provider"]] += 1
        moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        await db.execute("UPDATE usage_records SET started_at = $2, finished_at = $2 "
                         "WHERE request_id = $1", row["request_id"], moment)


async def script_provider_reports(db: asyncpg.Connection, state: AdminState) -> list[Spend]:
    """The providers' view: every ledger row under the model's dated snapshot name, plus
    3% more tokens made around the gateway each day (and one more request); answers the
    extra spend."""
    rows = await db.fetch(
        """SELECT provider, model, (started_at AT TIME ZONE 'UTC')::date AS day,
                  input_tokens, cached_input_tokens, cache_write_tokens, output_tokens
           FROM usage_records ORDER BY started_at""")
    extra = []
    for r in rows:
        cached, written = r["cached_input_tokens"], r["cache_write_tokens"]
        spend = Spend(r["provider"], r["day"], SNAPSHOTS[r["model"]],
                      input=r["input_tokens"] - cached - written, cache_read=cached,
                      cache_write_5m=written, output=r["output_tokens"], requests=1)
        state.spend.append(spend)
        extra.append(Spend(spend.provider, spend.day, spend.model,
                           input=round(spend.input * EXTRA), cache_read=round(cached * EXTRA),
                           cache_write_5m=round(written * EXTRA),
                           output=round(spend.output * EXTRA), requests=1))
    state.spend.extend(extra)
    return extra


def provider_cost(spend: list[Spend], provider: str) -> Decimal:
    total = D(0)
    for s in spend:
        if s.provider == provider:
            price = PROVIDER_PRICES[s.model]
            total += sum((price.cost(kind, getattr(s, kind))
                          for kind in ("input", "cache_read", "cache_write_5m", "output")),
                         D(0))
    return total


async def sync(gw: TestClient, **body: Any) -> dict[str, Any]:
    resp = await gw.post("/api/sync", json=body, headers=admin_headers())
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    assert answer["success"] is True
    return dict(answer["data"]["results"])


async def table(gw: TestClient, start: date, end: date, **query: str) -> dict[str, Any]:
    resp = await gw.get("/api/reconciliation", headers=admin_headers(),
                        params={"start_date": start.isoformat(), "end_date": end.isoformat(),
                                **query})
    assert resp.status == 200, await resp.text()
    answer = json.loads(await resp.text(), parse_float=Decimal)
    return {p["provider"]: p for p in answer["providers"]}


async def stored(db: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    usage = await db.fetch("SELECT * FROM provider_usage ORDER BY 1, 2, 3, 4, 5, 6")
    costs = await db.fetch("SELECT * FROM provider_costs ORDER BY 1, 2, 3, 4, 5")
    return ([tuple(v for k, v in r.items() if k != "imported_at") for r in usage],
            [tuple(v for k, v in r.items() if k != "imported_at") for r in costs])


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", seen
    await runner.cleanup()


async def test_a_month_with_spend_around_the_gateway_and_a_wrong_price(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str],
        receiver: tuple[str, list[tuple[dict[str, str], bytes]]]) -> None:
    state, url = admin_api
    # Tiny calls: only the 1% tolerance judges them.
    gw = await make_gateway(sync=sync_settings(url, tolerance_usd=0),
                            webhooks={"poll_interval_s": 0.05})
    hook_url, deliveries = receiver
    resp = await gw.post("/api/admin/webhooks", headers=admin_headers(), json={
        "url": hook_url, "events": ["reconciliation.mismatch"]})
    assert resp.status == 201, await resp.text()
    secret = (await resp.json())["secret"]
    _, key = await create_project(gw, plan="enterprise")
    days = month()
    await send_traffic(gw, fake_upstream, key, days, db)
    extra = await script_provider_reports(db, state)

    results = await sync(gw, start_date=days[0].isoformat(), end_date=days[-1].isoformat())
    assert {p: r["status"] for p, r in results.items()} == {"openai": "ok", "anthropic": "ok"}
    assert all(r["mismatched_days"] == [d.isoformat() for d in days] for r in results.values())
    # Paged to the end: chunks of 7, 7, 7, 7 and 2 days at 3 buckets a page are 13 pages.
    assert len([e for e in state.log if e["path"] == "/v1/organization/costs"]) == 13
    assert len([e for e in state.log if e["path"] == "/v1/organizations/cost_report"]) == 13

    view = await table(gw, days[0], days[-1])
    ledger = {r["provider"]: r["cost"] for r in await db.fetch(
        "SELECT provider, sum(cost_usd) AS cost FROM usage_records GROUP BY provider")}
    openai, anthropic = view["openai"], view["anthropic"]

    # OpenAI: prices agree; the difference is exactly the spend made around the gateway.
    assert openai["totals"]["ledger_cost_usd"] == ledger["openai"]
    assert openai["totals"]["untracked_usd"] == provider_cost(extra, "openai")
    assert openai["totals"]["price_difference_usd"] == 0
    assert openai["totals"]["timing_usd"] == 0 and openai["totals"]["over_recorded_usd"] == 0
    assert openai["price_differences"] == []
    share = openai["totals"]["untracked_usd"] / ledger["openai"]
    assert abs(share - EXTRA) < D("0.002"), share
    for row in openai["rows"]:
        assert row["model"] == "gpt-4o-mini"  # the snapshot name is the price table's model
        assert row["provider_requests"] == row["ledger_requests"] + 1

    # Anthropic: the same 3% around the gateway, at its price, and the gateway's price 10% low.
    assert anthropic["totals"]["untracked_usd"] == provider_cost(extra, "anthropic")
    assert anthropic["totals"]["price_difference_usd"] == ledger["anthropic"] * D("0.1")
    assert anthropic["totals"]["timing_usd"] == 0
    assert anthropic["totals"]["over_recorded_usd"] == 0
    assert {(p["token_type"], p["gateway_per_million"], p["provider_per_million"],
             p["difference_per_million"], p["difference_percent"])
            for p in anthropic["price_differences"]} == {
        ("input", D("3"), D("3.3"), D("0.3"), D("10")),
        ("cache_read", D("0.3"), D("0.33"), D("0.03"), D("10")),
        ("cache_write", D("3.75"), D("4.125"), D("0.375"), D("10")),
        ("output", D("15"), D("16.5"), D("1.5"), D("10"))}
    for name in ("openai", "anthropic"):
        totals = view[name]["totals"]
        assert totals["difference_usd"] == totals["provider_cost_usd"] - ledger[name]
        assert view[name]["days_outside_tolerance"] == 30
    # Day by day too: each day's untracked spend is that day's spend around the gateway, and
    # each Anthropic day's price difference a tenth of what the ledger charged that day.
    ledger_days = {(r["provider"], r["day"]): r["cost"] for r in await db.fetch(
        """SELECT provider, (started_at AT TIME ZONE 'UTC')::date AS day, sum(cost_usd) AS cost
           FROM usage_records GROUP BY 1, 2""")}
    for name in ("openai", "anthropic"):
        for d in view[name]["days"]:
            day = date.fromisoformat(d["day"])
            assert d["untracked_usd"] == provider_cost(
                [s for s in extra if s.day == day], name)
            assert d["price_difference_usd"] == (
                ledger_days[(name, day)] * D("0.1") if name == "anthropic" else 0)

    # One signed event per day and provider, delivered.
    assert await db.fetchval("SELECT count(*) FROM reconciliation_alerts") == 60
    deadline = asyncio.get_running_loop().time() + 10
    while len(deliveries) < 60:
        assert asyncio.get_running_loop().time() < deadline, len(deliveries)
        await asyncio.sleep(0.05)
    headers, body = deliveries[0]
    assert webhooks.verify_signature(secret, headers[webhooks.HEADER_TIMESTAMP], body,
                                     headers[webhooks.HEADER_SIGNATURE])
    event = json.loads(body, parse_float=Decimal)
    assert event["event"] == "reconciliation.mismatch"
    data = event["data"]
    [day] = [d for d in view[data["provider"]]["days"] if d["day"] == data["day"]]
    assert {k: data[k] for k in day} == day  # the day's row of the table, exactly
    assert data["models"][0]["model"] in ("gpt-4o-mini", "claude-sonnet-4-5")
    assert sorted((json.loads(b)["data"]["provider"], json.loads(b)["data"]["day"])
                  for _, b in deliveries) == sorted(
        (p, d.isoformat()) for p in ("openai", "anthropic") for d in days)

    # Importing twice changes nothing: the same rows, the same table, no second event.
    before = await stored(db)
    again = await sync(gw, start_date=days[0].isoformat(), end_date=days[-1].isoformat(),
                       force=True)
    assert all(r["status"] == "ok" and r["mismatched_days"] == [] for r in again.values())
    assert await stored(db) == before
    assert await table(gw, days[0], days[-1]) == view
    assert await db.fetchval("SELECT count(*) FROM webhook_outbox") == 60


def script_days(state: AdminState, days: list[date]) -> None:
    """Provider spend alone (nothing through the gateway): each day a little different."""
    for i, day in enumerate(days):
        state.spend.append(Spend("openai", day, "gpt-4o-mini-2024-07-18", input=1000 + i,
                                 cache_read=10 * i, output=100 + i, requests=2))
        state.spend.append(Spend("anthropic", day, "claude-sonnet-4-5-20250929",
                                 input=500 + i, cache_write_1h=i, output=50 + i))


async def bill_sync(gw: TestClient, provider: str, account: str = "gateway") -> Any:
    """One account's bill-import state, as `GET /api/status` shows it (`billSync`)."""
    resp = await gw.get("/api/status", headers=admin_headers())
    assert resp.status == 200, await resp.text()
    [entry] = [s for s in (await resp.json())["data"]["billSync"]
               if (s["provider"], s["account"]) == (provider, account)]
    return entry


async def test_a_failure_mid_import_resumes_after_the_last_stored_day(
        make_gateway: GatewayFactory, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str]) -> None:
    state, url = admin_api
    days = month()
    script_days(state, days)
    gw = await make_gateway(sync=sync_settings(url))
    state.fail_from, state.fail_times = days[14], 1  # the third 7-day chunk fails once
    span = {"start_date": days[0].isoformat(), "end_date": days[-1].isoformat()}

    first = await sync(gw, providers=["openai"], **span)
    assert first["openai"]["status"] == "error"
    assert "answered 500" in first["openai"]["error"]
    assert [r["day"] for r in await db.fetch(
        "SELECT DISTINCT day FROM provider_usage ORDER BY day")] == days[:14]
    status = await bill_sync(gw, "openai")
    assert status["status"] == "error" and "answered 500" in status["lastError"]
    assert status["range"]["doneThrough"] == days[13].isoformat()
    assert status["lastSuccessAt"] is None

    state.log.clear()
    second = await sync(gw, providers=["openai"], **span)
    assert second["openai"]["status"] == "ok"
    assert second["openai"]["resumed_from"] == days[14].isoformat()
    assert min(e["first_day"] for e in state.log) == days[14]  # the first 14 days not again
    resumed = await stored(db)
    status = await bill_sync(gw, "openai")
    assert status["status"] == "ok" and status["lastSuccessAt"] is not None
    assert status["lastError"] is not None  # the last error stays on record
    resp = await gw.get("/api/status", headers=admin_headers())
    assert (await resp.json())["data"]["integrations"]["openai"]["lastSync"] == status[
        "lastSuccessAt"]

    # The resumed import stored what one clean import stores.
    await db.execute("TRUNCATE provider_usage, provider_costs, sync_state")
    clean = await sync(gw, providers=["openai"], force=True, **span)
    assert clean["openai"]["status"] == "ok" and clean["openai"]["resumed_from"] is None
    assert await stored(db) == resumed
    assert len({r[2] for r in resumed[0]}) == 30


async def test_a_revised_day_replaces_what_was_stored(
        make_gateway: GatewayFactory, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str]) -> None:
    state, url = admin_api
    days = month()[-3:]
    script_days(state, days)
    gw = await make_gateway(sync=sync_settings(url, days=3))
    await sync(gw)  # the last `sync.days` days: today and the two before
    state.spend = [s for s in state.spend if s.day != days[-1] or s.provider != "openai"]
    state.spend.append(Spend("openai", days[-1], "gpt-4o-mini-2024-07-18", input=7, output=3,
                             requests=1))
    await sync(gw, start_date=days[0].isoformat(), end_date=days[-1].isoformat())
    rows = await db.fetch("SELECT input_tokens, output_tokens, requests FROM provider_usage "
                          "WHERE provider = 'openai' AND day = $1", days[-1])
    assert [tuple(r) for r in rows] == [(7, 3, 1)]
    costs = await db.fetch("SELECT line_item, amount_usd FROM provider_costs "
                           "WHERE provider = 'openai' AND day = $1 ORDER BY 1", days[-1])
    assert [tuple(c) for c in costs] == [("gpt-4o-mini-2024-07-18, input", D("0.00000105")),
                                         ("gpt-4o-mini-2024-07-18, output", D("0.0000018"))]


async def test_two_replicas_never_sync_at_once(
        make_gateway: GatewayFactory, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str]) -> None:
    state, url = admin_api
    script_days(state, month()[-2:])
    state.gate = asyncio.Event()
    # Both replicas run the background sync every 50 ms, and each can be asked on demand.
    settings = sync_settings(url, enabled=True, interval_s=0.05, days=2)
    first = await make_gateway(sync=settings)
    second = await make_gateway(sync=settings)
    await asyncio.wait_for(state.entered.wait(), 10)
    holders = await db.fetch(
        """SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1""",
        "gateway-sync-lock")
    assert len(holders) == 1
    for replica in (first, second):
        resp = await replica.post("/api/sync", json={}, headers=admin_headers())
        assert resp.status == 409
        assert (await resp.json())["reason"] == "sync_in_progress"
        assert (await bill_sync(replica, "openai"))["status"] == "running"
    # The replica that does not hold the lock keeps trying, and skips every turn.
    waiting = first.app[SYNC] if second.app[SYNC].skipped == 0 else second.app[SYNC]
    deadline = asyncio.get_running_loop().time() + 10
    while first.app[SYNC].skipped + second.app[SYNC].skipped < 5:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert len(state.log) == 1  # one report request waits at the gate: one sync runs
    assert min(first.app[SYNC].skipped, second.app[SYNC].skipped) == 0, waiting
    state.gate.set()
    deadline = asyncio.get_running_loop().time() + 10
    while await db.fetchval("SELECT count(*) FROM sync_state WHERE state = 'ok'") < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    for replica in (first, second):  # both background loops stopped: no lock is held
        await replica.app[SYNC].close()
    # A run whose replica died says so: its state says running, but no one holds the lock.
    await db.execute("UPDATE sync_state SET state = 'running' WHERE provider = 'openai'")
    assert (await bill_sync(first, "openai"))["status"] == "interrupted"


async def test_a_projects_own_admin_key_reconciles_its_own_account(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str]) -> None:
    state, url = admin_api
    own_admin = "sk-admin-project-own-0123456789"
    state.admin_keys["openai"] = own_admin
    gw = await make_gateway(sync={**sync_settings(url), "openai_admin_key": "",
                                  "anthropic_admin_key": ""},
                            secrets={"key": "k" * 32})
    project, key = await create_project(gw, plan="enterprise")
    _, other_key = await create_project(gw, plan="enterprise")
    for body in ({"api_key": "sk-project-own-calls-0123"},
                 {"name": "org-admin", "api_key": own_admin}):
        resp = await gw.put(f"/api/admin/projects/{project['id']}/providers/openai", json=body,
                            headers=admin_headers())
        assert resp.status == 200, await resp.text()
    for k in (key, key, other_key):
        resp = await gw.post("/v1/chat/completions", headers={"Authorization": f"Bearer {k}"},
                             json={"model": "gpt-4o-mini",
                                   "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200, await resp.text()
    # The admin key is never used for calls: the project's calls carried its own key.
    used = {e["headers"].get("Authorization") for e in fake_upstream.state.log}
    assert f"Bearer {own_admin}" not in used and "Bearer sk-project-own-calls-0123" in used
    deadline = asyncio.get_running_loop().time() + 10
    while await db.fetchval("SELECT count(*) FROM usage_records") < 3:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    today = datetime.now(UTC).date()
    own = await db.fetch("SELECT * FROM usage_records WHERE project_id = $1", project["id"])
    state.spend.extend(Spend("openai", today, "gpt-4o-mini-2024-07-18", input=r["input_tokens"],
                             output=r["output_tokens"], requests=1) for r in own)

    account = f"project:{project['id']}"
    results = await sync(gw, providers=["openai"])
    assert results["openai"] == {"status": "not_configured", "records": 0}
    assert results[f"openai@{account}"]["status"] == "ok"
    [view] = (await table(gw, today, today)).values()
    assert view["account"] == account
    assert view["totals"]["ledger_cost_usd"] == sum(r["cost_usd"] for r in own)
    assert view["totals"]["difference_usd"] == 0  # the other project's call is not in it
    assert (await bill_sync(gw, "openai", account))["connected"] is True
    # A project key sees its own account's reconciliation, and no other.
    for k, accounts in ((key, [account]), (other_key, [])):
        resp = await gw.get("/api/reconciliation", headers={"Authorization": f"Bearer {k}"})
        assert resp.status == 200
        assert [p["account"] for p in (await resp.json())["providers"]] == accounts


async def test_provider_projects_map_to_gateway_projects(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str]) -> None:
    state, url = admin_api
    gw = await make_gateway(sync=sync_settings(url, project_map={
        "openai": {"search": "proj_search"}}))
    _, key = await create_project(gw, name="search", plan="enterprise")
    resp = await gw.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    deadline = asyncio.get_running_loop().time() + 10
    while not await db.fetchval("SELECT count(*) FROM usage_records"):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    row = await db.fetchrow("SELECT * FROM usage_records")
    today = datetime.now(UTC).date()
    state.spend.append(Spend("openai", today, "gpt-4o-mini-2024-07-18", project="proj_search",
                             input=row["input_tokens"], output=row["output_tokens"],
                             requests=1))
    state.spend.append(Spend("openai", today, "gpt-4o-mini-2024-07-18", project="proj_batch",
                             input=1_000_000, requests=1))  # a project no one maps: around
    await sync(gw, providers=["openai"])
    rows = {r["provider_project"]: r for r in (await table(gw, today, today))["openai"]["rows"]}
    assert rows["proj_search"]["difference_usd"] == 0
    assert rows["proj_search"]["ledger_requests"] == 1
    assert rows["proj_batch"]["untracked_usd"] == D("0.15")
    assert rows["proj_batch"]["ledger_cost_usd"] == 0


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/sync", {"providers": ["gemini"]}, "providers"),
    ("/api/sync", {"force": "yes"}, "force"),
    ("/api/sync", {"provider": "openai"}, "provider"),  # an unknown field
    ("/api/sync-organization-usage", {"service": "openai", "providers": ["openai"]},
     "providers"),
    ("/api/sync", {"start_date": "2026-11-05", "end_date": "2026-11-01"}, "end_date"),
    ("/api/sync-organization-usage", {}, "service"),
    ("/api/sync-organization-usage", {"service": "openai", "start_date": "yesterday"},
     "start_date"),
])
async def test_sync_requests_are_checked(make_gateway: GatewayFactory, path: str,
                                         body: dict[str, Any], field: str) -> None:
    gw = await make_gateway(sync={"enabled": False})
    resp = await gw.post(path, json=body, headers=admin_headers())
    assert resp.status == 400
    assert (await resp.json())["details"]["field"] == field


async def test_sync_organization_usage_imports_one_provider(
        make_gateway: GatewayFactory, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str]) -> None:
    state, url = admin_api
    script_days(state, month()[-2:])
    gw = await make_gateway(sync=sync_settings(url, days=2))
    resp = await gw.post("/api/sync-organization-usage", json={"service": "anthropic"},
                         headers=admin_headers())
    assert resp.status == 200, await resp.text()
    results = (await resp.json())["data"]["results"]
    assert list(results) == ["anthropic"] and results["anthropic"]["status"] == "ok"
    assert {r["provider"] for r in await db.fetch("SELECT provider FROM provider_usage")} == {
        "anthropic"}
    # The 1-hour cache writes are kept apart, and priced with the 5-minute ones as writes.
    assert await db.fetchval("SELECT sum(cache_write_1h_tokens) FROM provider_usage") == 1


async def test_a_call_across_midnight_is_timing_not_a_mismatch(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream, db: asyncpg.Connection,
        admin_api: tuple[AdminState, str]) -> None:
    state, url = admin_api
    gw = await make_gateway(sync=sync_settings(url, tolerance_usd=0, tolerance_percent=0))
    _, key = await create_project(gw, plan="enterprise")
    for i in range(4):
        fake_upstream.script({"reply_tokens": 10 * (i + 1)})
        resp = await gw.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "gpt-4o-mini",
                                   "messages": [{"role": "user", "content": PROMPT}]})
        assert resp.status == 200
    deadline = asyncio.get_running_loop().time() + 10
    while await db.fetchval("SELECT count(*) FROM usage_records") < 4:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    first, second = month()[-2:]
    late = datetime(first.year, first.month, first.day, 23, 59, 59, tzinfo=UTC)
    noon = [datetime(d.year, d.month, d.day, 12, tzinfo=UTC) for d in (first, second)]
    rows = await db.fetch("SELECT * FROM usage_records ORDER BY started_at")
    # The gateway records the third call just before midnight; the provider bills it the
    # next day.
    ledger_at = [noon[0], noon[0], late, noon[1]]
    billed_on = [first, first, second, second]
    for row, moment, day in zip(rows, ledger_at, billed_on, strict=True):
        await db.execute("UPDATE usage_records SET started_at = $2 WHERE request_id = $1",
                         row["request_id"], moment)
        state.spend.append(Spend("openai", day, "gpt-4o-mini-2024-07-18",
                                 input=row["input_tokens"], output=row["output_tokens"],
                                 requests=1))
    results = await sync(gw, providers=["openai"], start_date=first.isoformat(),
                         end_date=second.isoformat())
    assert results["openai"]["mismatched_days"] == []
    days = {d["day"]: d for d in (await table(gw, first, second))["openai"]["days"]}
    moved = rows[2]["cost_usd"]
    assert days[first.isoformat()]["timing_usd"] == -moved
    assert days[second.isoformat()]["timing_usd"] == moved
    for day in days.values():
        assert day["untracked_usd"] == 0 and day["over_recorded_usd"] == 0
        assert day["within_tolerance"] is True
