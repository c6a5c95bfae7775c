"""Webhook delivery against a real local receiver: signatures, retries, Slack, the admin API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ADMIN_TOKEN, SettingsFactory, admin_headers, create_project

from gateway import db as gwdb
from gateway import webhooks
from gateway.app import build_app
from gateway.credentials import SecretBox
from gateway.http import webhooks as webhook_routes
from gateway.settings import DatabaseSettings
from gateway.webhooks import WebhookSettings, WebhookWorker, verify_signature

FAST = WebhookSettings(backoff_s=0, backoff_max_s=0, poll_interval_s=0.02, timeout_s=5)


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def event_ids(self) -> list[str]:
        return [h[webhooks.HEADER_EVENT_ID] for h, _ in self.seen]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="")

    async def hook(request: web.Request) -> web.Response:
        state.seen.append((dict(request.headers), await request.read()))
        state.arrived.set()
        status = state.statuses.pop(0) if state.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "receiver broke")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    await db.execute("TRUNCATE webhook_outbox, webhook_endpoints, alerts_fired")
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1, pool_max_size=8))
    yield pool
    await pool.close()


async def endpoint(pool: asyncpg.Pool, url: str, *, events: list[str] | None = None,
                   fmt: str = "json", project_id: int | None = None,
                   box: SecretBox | None = None, enabled: bool = True) -> tuple[uuid.UUID, str]:
    async with pool.acquire() as conn:
        view, secret = await webhooks.create_endpoint(
            conn, box, project_id=project_id, url=url, events=events or ["budget.alert"],
            fmt=fmt, description="test", enabled=enabled, secret=None)
    return view["id"], secret


async def queue(pool: asyncpg.Pool, event_type: str = "budget.alert",
                project_id: int | None = None, **payload: Any) -> uuid.UUID:
    async with pool.acquire() as conn:
        event_id, _ = await webhooks.enqueue(conn, event_type, project_id, payload)
    return event_id


async def drain(worker: WebhookWorker, pool: asyncpg.Pool, rounds: int = 20) -> None:
    """Run the worker until nothing is pending (bounded)."""
    for _ in range(rounds):
        await worker.run_once()
        if not await worker.pending():
            return
    raise AssertionError("deliveries still pending")


def test_signatures_verify_and_tampering_fails() -> None:
    body, secret, now = b'{"event":"budget.alert"}', "whsec_abc", int(time.time())
    header = webhooks.sign(secret, now, body)
    assert header.startswith("v1=") and len(header) == 3 + 64
    assert verify_signature(secret, str(now), body, header)
    assert verify_signature(secret, now, body, f"v1=deadbeef, {header}")  # rotated secrets
    assert not verify_signature(secret, now, body + b" ", header)
    assert not verify_signature("whsec_other", now, body, header)
    assert not verify_signature(secret, now + 1, body, header)
    assert not verify_signature(secret, now - 600, body, webhooks.sign(secret, now - 600, body))
    assert not verify_signature(secret, "soon", body, header)


def test_payload_money_stays_exact() -> None:
    text = webhooks.encode_payload({"spend": Decimal("0.000000001"), "big": Decimal("1E+3"),
                                    "name": "dec:1", "when": None})
    assert json.loads(text, parse_float=Decimal) == {
        "spend": Decimal("0.000000001"), "big": 1000, "name": "dec:1", "when": None}


async def test_a_delivery_is_signed_and_marked_delivered(pool: asyncpg.Pool,
                                                         receiver: Receiver) -> None:
    endpoint_id, secret = await endpoint(pool, receiver.url)
    event_id = await queue(pool, project_id=None, threshold=Decimal(80),
                           current_spend=Decimal("800.000000001"))
    worker = WebhookWorker(pool, FAST, None)
    await worker.start()
    try:
        await asyncio.wait_for(receiver.arrived.wait(), 10)  # the polling loop found it
        await drain(worker, pool)
    finally:
        await worker.close()
    headers, body = receiver.seen[0]
    assert verify_signature(secret, headers[webhooks.HEADER_TIMESTAMP], body,
                            headers[webhooks.HEADER_SIGNATURE])
    assert not verify_signature(secret, headers[webhooks.HEADER_TIMESTAMP],
                                body.replace(b"800", b"900"), headers[webhooks.HEADER_SIGNATURE])
    assert headers[webhooks.HEADER_EVENT] == "budget.alert"
    assert headers[webhooks.HEADER_EVENT_ID] == str(event_id)
    assert headers["Content-Type"] == "application/json"
    envelope = json.loads(body, parse_float=Decimal)
    assert envelope["id"] == str(event_id) and envelope["event"] == "budget.alert"
    assert envelope["data"] == {"threshold": 80, "current_spend": Decimal("800.000000001")}
    row = await pool.fetchrow("SELECT * FROM webhook_outbox WHERE endpoint_id = $1",
                              endpoint_id)
    assert row["delivered_at"] is not None and row["attempts"] == 1
    assert row["last_status"] == 200 and worker.delivered == 1


async def test_a_failing_receiver_gets_the_event_once_it_recovers(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    receiver.statuses = [500, 500]
    _, secret = await endpoint(pool, receiver.url)
    event_id = await queue(pool, threshold=50)
    worker = WebhookWorker(pool, FAST, None)
    await worker.start()
    try:
        await drain(worker, pool)
    finally:
        await worker.close()
    assert receiver.event_ids() == [str(event_id)] * 3  # at least once: same id every time
    assert [h[webhooks.HEADER_ATTEMPT] for h, _ in receiver.seen] == ["1", "2", "3"]
    for headers, body in receiver.seen:  # each attempt signed afresh
        assert verify_signature(secret, headers[webhooks.HEADER_TIMESTAMP], body,
                                headers[webhooks.HEADER_SIGNATURE])
    row = await pool.fetchrow("SELECT * FROM webhook_outbox")
    assert row["delivered_at"] is not None and row["failed_at"] is None
    assert row["attempts"] == 3 and row["last_error"] is None
    assert (worker.retried, worker.delivered, worker.failed) == (2, 1, 0)


async def test_retries_stop_at_max_attempts(pool: asyncpg.Pool, receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    await endpoint(pool, receiver.url)
    await queue(pool, threshold=50)
    worker = WebhookWorker(pool, WebhookSettings(backoff_s=0, max_attempts=3), None)
    await worker.start()
    try:
        for _ in range(10):
            await worker.run_once()
    finally:
        await worker.close()
    assert len(receiver.seen) == 3
    row = await pool.fetchrow("SELECT * FROM webhook_outbox")
    assert row["failed_at"] is not None and row["delivered_at"] is None
    assert row["last_status"] == 500 and row["last_error"].startswith("HTTP 500")
    assert await worker.pending() == 0 and worker.failed == 1


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    worker = WebhookWorker(None, WebhookSettings(backoff_s=10, backoff_max_s=100), None)
    for attempts, (low, high) in {1: (5, 10), 2: (10, 20), 3: (20, 40), 9: (50, 100)}.items():
        delays = {worker.backoff_s(attempts) for _ in range(50)}
        assert all(low <= d <= high for d in delays) and len(delays) > 1
    assert worker.backoff_s(1, retry_after_s=60) == 60
    assert worker.backoff_s(1, retry_after_s=600) == 100


async def test_an_unreachable_receiver_is_retried_later(pool: asyncpg.Pool) -> None:
    await endpoint(pool, "http://127.0.0.1:9/nothing-listens")
    await queue(pool, threshold=50)
    worker = WebhookWorker(pool, WebhookSettings(backoff_s=30), None)
    await worker.start()
    try:
        assert await worker.run_once() == 1
        assert await worker.run_once() == 0  # backing off, not hammering
    finally:
        await worker.close()
    row = await pool.fetchrow("SELECT * FROM webhook_outbox")
    assert row["delivered_at"] is None and row["failed_at"] is None
    assert row["last_status"] is None and "Connect" in row["last_error"]
    assert (await pool.fetchval("SELECT next_attempt_at - now() FROM webhook_outbox")
            ).total_seconds() > 10


async def test_two_workers_share_the_outbox_without_doubling(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    await endpoint(pool, receiver.url)
    ids = {str(await queue(pool, threshold=n)) for n in range(40)}
    settings = WebhookSettings(batch_size=7)
    workers = [WebhookWorker(pool, settings, None) for _ in range(2)]
    for w in workers:
        await w.start()
    try:
        for _ in range(20):
            await asyncio.gather(*(w.run_once() for w in workers))
    finally:
        for w in workers:
            await w.close()
    assert sorted(receiver.event_ids()) == sorted(ids)  # each exactly once
    assert all(w.delivered > 0 for w in workers)


async def test_fan_out_follows_project_subscription_and_enabled(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    p1 = await pool.fetchval("INSERT INTO projects (name) VALUES ('a') RETURNING id")
    p2 = await pool.fetchval("INSERT INTO projects (name) VALUES ('b') RETURNING id")
    everyone, _ = await endpoint(pool, receiver.url)
    own, _ = await endpoint(pool, receiver.url, project_id=p1)
    other, _ = await endpoint(pool, receiver.url, project_id=p2)
    await endpoint(pool, receiver.url, events=["anomaly.detected"])
    await endpoint(pool, receiver.url, enabled=False)
    event_id = await queue(pool, project_id=p1, threshold=50)
    rows = await pool.fetch("SELECT event_id, endpoint_id FROM webhook_outbox")
    assert {r["endpoint_id"] for r in rows} == {everyone, own}
    assert {r["event_id"] for r in rows} == {event_id}  # one event, one id, two deliveries
    async with pool.acquire() as conn:  # replaying an event id queues nothing more
        again = await webhooks.enqueue_many(conn, [webhooks.Event(
            event_id, "budget.alert", p1, "{}")])
    assert again == 0 and other not in {r["endpoint_id"] for r in rows}


async def test_slack_format(pool: asyncpg.Pool, receiver: Receiver) -> None:
    await endpoint(pool, receiver.url, fmt="slack")
    await queue(pool, project="checkout", project_id=1, threshold=80,
                percentage_used=Decimal("82.50"), current_spend=Decimal("825"),
                budget_limit=Decimal("1000"), period="2025-08")
    worker = WebhookWorker(pool, FAST, None)
    await worker.start()
    try:
        await drain(worker, pool)
    finally:
        await worker.close()
    message = json.loads(receiver.seen[0][1])
    assert set(message) == {"text", "blocks"}
    assert message["text"] == (
        ":warning: Budget alert: project *checkout* has used 82.5% of its monthly budget "
        "($825.00 of $1,000.00), crossing the 80% threshold for 2025-08.")
    section, context = message["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": message["text"]}}
    assert context["type"] == "context" and "budget.alert" in context["elements"][0]["text"]


def test_slack_text_for_every_event() -> None:
    texts = {t: webhooks.slack_text(t, {"project": "p", "cost_usd": Decimal("0.0042"),
                                        "current_hour_spend": Decimal("12.3"),
                                        "reason": "budget", "current": 5, "limit": 4})
             for t in (*webhooks.SUBSCRIBABLE, webhooks.TEST_EVENT)}
    assert "Budget exceeded" in texts["usage.exceeded"]
    assert "$12.30" in texts["anomaly.detected"] and "$0.0042" in texts["usage.tracked"]
    assert len(set(texts.values())) == len(texts)


async def test_sealed_secrets_sign_only_with_the_key(pool: asyncpg.Pool,
                                                     receiver: Receiver) -> None:
    box = SecretBox("k" * 40)
    endpoint_id, secret = await endpoint(pool, receiver.url, box=box)
    stored = await pool.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", endpoint_id)
    assert stored["secret_plain"] is None and secret.encode() not in stored["secret_ciphertext"]
    await queue(pool, threshold=50)
    keyless = WebhookWorker(pool, WebhookSettings(backoff_s=0), None)
    await keyless.start()
    try:
        await keyless.run_once()
    finally:
        await keyless.close()
    assert receiver.seen == []
    assert "GATEWAY_SECRET_KEY is not set" in await pool.fetchval(
        "SELECT last_error FROM webhook_outbox")
    worker = WebhookWorker(pool, FAST, box)
    await worker.start()
    try:
        await drain(worker, pool)
    finally:
        await worker.close()
    headers, body = receiver.seen[0]
    assert verify_signature(secret, headers[webhooks.HEADER_TIMESTAMP], body,
                            headers[webhooks.HEADER_SIGNATURE])


# -- the admin API ---------------------------------------------------------------------------

ROUTES = (
    ("POST", "/api/admin/webhooks", webhook_routes.create_webhook),
    ("GET", "/api/admin/webhooks", webhook_routes.list_webhooks),
    ("GET", "/api/admin/webhooks/{id}", webhook_routes.get_webhook),
    ("PATCH", "/api/admin/webhooks/{id}", webhook_routes.update_webhook),
    ("DELETE", "/api/admin/webhooks/{id}", webhook_routes.delete_webhook),
    ("POST", "/api/admin/webhooks/{id}/test", webhook_routes.test_webhook),
    ("GET", "/api/admin/webhooks/{id}/deliveries", webhook_routes.list_deliveries),
    ("PUT", "/api/admin/projects/{id}/alerts", webhook_routes.put_alerts),
    ("GET", "/api/admin/projects/{id}/alerts", webhook_routes.get_alerts),
    ("POST", "/api/budgets", webhook_routes.create_budget),
)


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: SettingsFactory,
                 pool: asyncpg.Pool) -> TestClient:
    app = build_app(make_settings())
    known = {(r.method, r.resource.canonical) for r in app.router.routes()
             if r.resource is not None}
    for method, path, handler in ROUTES:  # until the lead wires them into routes.py
        if (method, path) not in known:
            app.router.add_route(method, path, handler)
    result: TestClient = await aiohttp_client(app)
    return result


async def test_webhook_admin_api(client: TestClient, pool: asyncpg.Pool,
                                 receiver: Receiver) -> None:
    project, _ = await create_project(client)
    h = admin_headers()
    resp = await client.post("/api/admin/webhooks", headers=h, json={
        "url": receiver.url, "project_id": project["id"], "format": "slack",
        "events": ["usage.tracked", "budget.alert"]})
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["secret"].startswith("whsec_") and created["secret_hint"]
    assert created["events"] == ["budget.alert", "usage.tracked"]
    hook_id = created["id"]
    listed = await (await client.get("/api/admin/webhooks", headers=h)).json()
    assert [w["id"] for w in listed["webhooks"]] == [hook_id]
    assert "secret" not in listed["webhooks"][0]
    resp = await client.patch(f"/api/admin/webhooks/{hook_id}", headers=h,
                              json={"enabled": False})
    assert (await resp.json())["enabled"] is False
    resp = await client.post(f"/api/admin/webhooks/{hook_id}/test", headers=h)
    assert resp.status == 409
    await client.patch(f"/api/admin/webhooks/{hook_id}", headers=h, json={"enabled": True})
    resp = await client.post(f"/api/admin/webhooks/{hook_id}/test", headers=h)
    assert resp.status == 202
    event_id = (await resp.json())["event_id"]
    deliveries = await (await client.get(f"/api/admin/webhooks/{hook_id}/deliveries",
                                         headers=h)).json()
    assert [(d["event_id"], d["state"]) for d in deliveries["deliveries"]] == [
        (event_id, "pending")]
    worker = WebhookWorker(pool, FAST, None)
    await worker.start()
    try:
        await drain(worker, pool)
    finally:
        await worker.close()
    headers, body = receiver.seen[0]
    assert headers[webhooks.HEADER_EVENT] == webhooks.TEST_EVENT
    assert verify_signature(created["secret"], headers[webhooks.HEADER_TIMESTAMP], body,
                            headers[webhooks.HEADER_SIGNATURE])
    assert "Test event" in json.loads(body)["text"]
    resp = await client.delete(f"/api/admin/webhooks/{hook_id}", headers=h)
    assert resp.status == 204
    assert (await client.get(f"/api/admin/webhooks/{hook_id}", headers=h)).status == 404
    assert (await client.delete(f"/api/admin/webhooks/{hook_id}", headers=h)).status == 404
    assert await pool.fetchval("SELECT count(*) FROM webhook_outbox") == 0


async def test_webhook_admin_api_refuses_bad_bodies(client: TestClient) -> None:
    h = admin_headers()
    resp = await client.post("/api/admin/webhooks", headers=h, json={
        "url": "ftp://x", "events": ["usage.everything"], "format": "xml", "extra": 1})
    assert resp.status == 400
    fields = {p["field"] for p in (await resp.json())["details"]["errors"]}
    assert fields == {"url", "events", "format", "extra"}
    resp = await client.post("/api/admin/webhooks", headers=h,
                             json={"url": "http://127.0.0.1:1/x", "project_id": 999999})
    assert resp.status == 404
    resp = await client.post("/api/admin/webhooks", json={"url": "http://127.0.0.1:1/x"})
    assert resp.status == 401
    assert (await client.get("/api/admin/webhooks/not-a-uuid", headers=h)).status == 404


async def test_alert_thresholds_and_seed_budgets(client: TestClient) -> None:
    project, key = await create_project(client, monthly_budget_usd=100)
    h = admin_headers()
    resp = await client.put(f"/api/admin/projects/{project['id']}/alerts", headers=h,
                            json={"thresholds": [90, 75, 100]})
    assert resp.status == 200
    assert (await resp.json())["thresholds"] == [75, 90, 100]
    resp = await client.put(f"/api/admin/projects/{project['id']}/alerts", headers=h,
                            json={"thresholds": [0]})
    assert resp.status == 400
    state = await (await client.get(f"/api/admin/projects/{project['id']}/alerts",
                                    headers=h)).json()
    assert state["thresholds"] == [75, 90, 100] and state["monthly_budget_usd"] == 100
    # The seed's body, with the project's own key: it may lower its budget...
    mine = {"Authorization": f"Bearer {key}"}
    resp = await client.post("/api/budgets", headers=mine, json={
        "name": "Monthly AI Budget", "limit": 80.5, "period": "monthly",
        "alert_at": [50, 80, 100], "notify": ["email", "slack"]})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["limit"] == 80.5 and body["alert_at"] == [50, 80, 100]
    assert body["project_id"] == project["id"] and len(body["warnings"]) == 1
    # ...but not raise it; the admin token can, naming the project.
    resp = await client.post("/api/budgets", headers=mine, json={"limit": 1000})
    assert resp.status == 403 and (await resp.json())["code"] == "budget_raise_forbidden"
    resp = await client.post("/api/budgets", headers=h,
                             json={"limit": 1000, "project_id": project["id"]})
    assert resp.status == 201 and (await resp.json())["alert_at"] == [50, 80, 100]
    stored = await (await client.get(f"/api/admin/projects/{project['id']}",
                                     headers=h)).json()
    assert stored["monthly_budget_usd"] == 1000
    for bad in ({"limit": -1}, {"limit": 5, "period": "weekly"}, {"limit": 5, "alert_at": 50},
                {"limit": 5, "notify": ["pager"]}, {"limit": 5, "colour": "red"}):
        resp = await client.post("/api/budgets", headers=mine, json=bad)
        assert resp.status == 400, bad
    resp = await client.post("/api/budgets", json={"limit": 5})
    assert resp.status == 401
    assert ADMIN_TOKEN not in json.dumps(body)


async def test_a_budget_alert_from_a_proxied_call_is_delivered_at_once(
        make_gateway: Any, receiver: Receiver, fake_upstream: Any) -> None:
    """End to end: a call crosses the budget's 50 % threshold; the alert commits with its
    usage row and wakes the worker, so it arrives long before the worker's next poll."""
    client = await make_gateway(webhooks={"poll_interval_s": 60})  # polls would take a minute
    # gpt-4o-mini, about 10 prompt tokens and 5 out: about $0.0000045, most of the budget
    project, key = await create_project(client, monthly_budget_usd="0.000006")
    resp = await client.post("/api/admin/webhooks", headers=admin_headers(), json={
        "url": receiver.url, "project_id": project["id"], "events": ["budget.alert"]})
    assert resp.status == 201, await resp.text()
    secret = (await resp.json())["secret"]
    resp = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "gpt-4o-mini", "max_tokens": 5,
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200, await resp.text()
    await asyncio.wait_for(receiver.arrived.wait(), 10)  # bounded; a poll would take 60 s
    headers, body = receiver.seen[0]
    assert headers[webhooks.HEADER_EVENT] == "budget.alert"
    assert verify_signature(secret, headers[webhooks.HEADER_TIMESTAMP], body,
                            headers[webhooks.HEADER_SIGNATURE])
    assert json.loads(body)["project_id"] == project["id"]
