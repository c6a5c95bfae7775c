"""No billed row is lost: text PostgreSQL cannot hold is made storable, and a row it still
refuses waits in ledger_dead_letters (counted in /metrics, readiness degraded) until replayed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import admin_headers, chat_body, create_project, wait_for_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import db as gwdb
from gateway.domain import Usage, UsageRecord
from gateway.keys import LEDGER, POOL
from gateway.ledger import InsertedRow, Ledger, decode_row, encode_row
from gateway.settings import DatabaseSettings, LedgerSettings
from gateway.storable import storable_json, storable_text

NASTY = "a\x00b\ud800c"  # a NUL and a lone surrogate
CLEAN = "a\ufffdb\ufffdc"


def row(**changes: object) -> UsageRecord:
    now = datetime.now(UTC)
    values = dict(request_id=uuid.uuid4(), project_id=1, api_key_id=1, provider="openai",
                  model="gpt-4o-mini", endpoint="/v1/chat/completions", status=200,
                  streamed=False, usage=Usage(10, 2, 5), cost_usd=Decimal("0.0000042"),
                  priced_by_fallback=False, price_model="gpt-4o-mini", overhead_ms=0.4,
                  upstream_ms=12.5, error_code=None, metadata={"feature": "x"},
                  started_at=now, finished_at=now)
    values.update(changes)
    return UsageRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", "plain"), ("héllo ✓", "héllo ✓"), ("\x00", "\ufffd"), (NASTY, CLEAN),
    ("\udfff tail", "\ufffd tail"), ("😀", "😀"),
])
def test_storable_text(value: str, expected: str) -> None:
    assert storable_text(value) == expected


def test_storable_json_cleans_keys_and_nested_values() -> None:
    clean = {"k": ["v", {"n": 1}], "ok": True}
    assert storable_json(clean) is clean  # nothing to do: the very same object
    assert storable_json({NASTY: [NASTY, {"x\x00": 1}], "n": None}) == {
        CLEAN: [CLEAN, {"x\ufffd": 1}], "n": None}
    orjson.dumps(storable_json({"\ud800": "\udc00"}))  # now serialisable


def test_a_row_with_unstorable_text_still_encodes_and_decodes() -> None:
    from gateway.ledger import as_row
    line = encode_row(as_row(row(model=NASTY, metadata={NASTY: NASTY})))
    decoded = decode_row(line)
    assert CLEAN in decoded and {CLEAN: CLEAN} in decoded


async def _pool(database_url: str) -> asyncpg.Pool:
    return await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))


async def test_nul_and_lone_surrogates_reach_the_ledger_replaced(
        database_url: str, db: asyncpg.Connection) -> None:
    pool = await _pool(database_url)
    ledger = Ledger(pool, LedgerSettings(batch_size=10, flush_interval_s=10))
    batched = row(model=NASTY, provider="open\x00ai", endpoint=NASTY, requested_model=NASTY,
                  metadata={NASTY: NASTY, "list": [NASTY]},
                  attempts=[{"provider": NASTY, "status": 200}])
    ledger.record(batched)
    assert await ledger.flush() == 1
    assert await ledger.write_now(row(model=NASTY, metadata={"k": "\x00"})) is True
    await pool.close()
    stored = await db.fetch("SELECT * FROM usage_records ORDER BY model, provider")
    assert len(stored) == 2 and ledger.rejected == 0
    first = next(r for r in stored if r["request_id"] == batched.request_id)
    assert first["model"] == CLEAN and first["endpoint"] == CLEAN
    assert first["provider"] == "open\ufffdai" and first["requested_model"] == CLEAN
    assert first["metadata"] == {CLEAN: CLEAN, "list": [CLEAN]}
    assert first["attempts"][0]["provider"] == CLEAN


async def test_refused_rows_wait_as_dead_letters_and_are_replayed(
        database_url: str, db: asyncpg.Connection) -> None:
    seen: list[InsertedRow] = []

    async def hook(conn: asyncpg.Connection, rows: Sequence[InsertedRow]) -> None:
        seen.extend(rows)

    await db.execute("ALTER TABLE usage_records ADD CONSTRAINT test_refuse "
                     "CHECK (model <> 'refuse-me')")
    try:
        pool = await _pool(database_url)
        ledger = Ledger(pool, LedgerSettings(batch_size=10, flush_interval_s=10),
                        hooks=[hook])
        good, refused = row(), row(model="refuse-me", cost_usd=Decimal("0.5"))
        ledger.record(good)
        ledger.record(refused)
        await ledger.flush()
        assert [r.request_id for r in seen] == [good.request_id]
        assert ledger.rejected == 1 and await ledger.count_dead_letters() == 1
        letters = await ledger.dead_letters()
        assert [letter["request_id"] for letter in letters] == [refused.request_id]
        assert "test_refuse" in letters[0]["error"]

        again = await ledger.replay_dead_letters()  # still refused: kept, counted again
        assert again == {"replayed": 0, "already_stored": 0, "still_refused": 1,
                         "waiting": 1}
        assert await db.fetchval("SELECT failures FROM ledger_dead_letters") == 2
    finally:
        await db.execute("ALTER TABLE usage_records DROP CONSTRAINT test_refuse")
    done = await ledger.replay_dead_letters()  # the cause is gone: replayed, hooks included
    assert done == {"replayed": 1, "already_stored": 0, "still_refused": 0, "waiting": 0}
    assert seen[-1].request_id == refused.request_id
    assert await db.fetchval("SELECT cost_usd FROM usage_records WHERE request_id = $1",
                             refused.request_id) == Decimal("0.5")
    assert await ledger.replay_dead_letters() == {
        "replayed": 0, "already_stored": 0, "still_refused": 0, "waiting": 0}
    await pool.close()


async def test_dead_letters_show_in_readiness_metrics_and_the_admin_api(
        gateway: TestClient, db: asyncpg.Connection) -> None:
    await db.execute("ALTER TABLE usage_records ADD CONSTRAINT test_refuse "
                     "CHECK (model <> 'refuse-me')")
    try:
        ledger = gateway.app[LEDGER]
        ledger.record(row(model="refuse-me"))
        await ledger.flush()
        ready = await (await gateway.get("/api/health/ready")).json()
        assert ready["ok"] is True and ready["status"] == "degraded"
        assert ready["checks"]["ledger"]["dead_letters"] == 1
        metrics = await (await gateway.get("/metrics")).text()
        assert "gateway_ledger_dead_letters 1" in metrics
        assert "gateway_ledger_dead_lettered_rows_total 1" in metrics
        listed = await gateway.get("/api/admin/ledger/dead-letters", headers=admin_headers())
        assert listed.status == 200
        body = await listed.json()
        assert body["waiting"] == 1 and body["dead_letters"][0]["error"]
    finally:
        await db.execute("ALTER TABLE usage_records DROP CONSTRAINT test_refuse")
    resp = await gateway.post("/api/admin/ledger/dead-letters/replay", headers=admin_headers())
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["replayed"] == 1
    ready = await (await gateway.get("/api/health/ready")).json()
    assert ready["status"] == "ready" and ready["checks"]["ledger"]["dead_letters"] == 0


@pytest.mark.parametrize("where", ["header", "metadata_key", "metadata_value", "model"])
async def test_every_billed_call_with_a_nul_has_exactly_one_row(
        gateway: TestClient, where: str) -> None:
    _, key = await create_project(gateway)
    headers = {"Authorization": f"Bearer {key}"}
    body = chat_body()
    if where == "header":
        headers["X-AI-Cost-Gateway-Metadata"] = orjson.dumps({"team": "a\x00b"}).decode()
    elif where == "metadata_key":
        body["metadata"] = {"a\x00b": "x"}
    elif where == "metadata_value":
        body["metadata"] = {"team": "a\x00b"}
    else:
        body["model"] = "gpt-4o-mini\x00"
    resp = await gateway.post("/v1/chat/completions", json=body, headers=headers)
    await resp.read()
    assert resp.status == 200  # billed: exactly one row, with the text made storable
    rows = await wait_for_rows(gateway, 1)
    assert len(rows) == 1
    assert b"\\u0000" not in orjson.dumps(dict(rows[0]), default=str)
    assert gateway.app[LEDGER].rejected == 0


_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(
    ["\x00", "\ud800", "\udfff"]), max_size=12)


@settings(max_examples=25, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(metadata=st.dictionaries(_texts, _texts, max_size=4), suffix=_texts)
async def test_each_200_of_the_proxy_has_exactly_one_ledger_row(
        gateway: TestClient, metadata: dict[str, str], suffix: str) -> None:
    """Whatever text the metadata and the model name carry: 200 means one stored row, a
    refusal means a 4xx, never a 5xx, and never a row PostgreSQL refused."""
    _, key = await create_project(gateway)
    body = {**chat_body(model=f"gpt-4o-mini{suffix}"), "metadata": metadata}
    raw = json.dumps(body).encode()  # lone surrogates go as JSON escapes, as from a client
    resp = await gateway.post("/v1/chat/completions", data=raw, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    await resp.read()
    assert resp.status < 500
    request_id = uuid.UUID(resp.headers["X-AI-Cost-Gateway-Request-Id"])
    await gateway.app[LEDGER].flush()
    stored = await gateway.app[POOL].fetchval(
        "SELECT count(*) FROM usage_records WHERE request_id = $1", request_id)
    if resp.status == 200:
        assert stored == 1
    assert gateway.app[LEDGER].rejected == 0
