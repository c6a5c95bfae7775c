"""Issue 13's table, one test a row: real `gateway serve` processes whose PostgreSQL is reached
through a proxy that refuses (`cut`) or black-holes (a partition), under a small bounded
load, half of it streamed. The rules: an answered call is never lost nor doubled, shutdown
fits its deadline, a budget is never overspent, a partition stalls no one, and the gateway
starts without its database. Each test prints its measurements (`pytest -s`)."""

from __future__ import annotations

import asyncio
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from conftest import FakeUpstream

from .conftest import GatewayStarter, ProxyFactory
from .harness import (
    REQUEST_ID_HEADER,
    GatewayProcess,
    Load,
    chat,
    check_ledger,
    dir_bytes,
    metric,
    new_project,
    project_spend,
    ready_status,
    wait_ledger,
)

ROWS_WITHIN_S = 20.0  # after the fault: every answered call's row is stored by then


def report(scenario: str, **numbers: Any) -> None:
    print(f"\nFAULT {scenario}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


def shutdown_events(gw: GatewayProcess) -> list[str]:
    """The process's log from its draining on: "event@timestamp", for the report."""
    names = [e.get("event") for e in gw.log]
    start = names.index("gateway_draining") if "gateway_draining" in names else len(names)
    return [f"{e.get('event')}@{str(e.get('timestamp', ''))[-12:]}" for e in gw.log[start:]]


def fault_statuses(load: Load, allowed: frozenset[tuple[int, str | None]] = frozenset()
                   ) -> dict[tuple[int, str | None], int]:
    """Answers other than 200 and other than `allowed` (status, code) pairs."""
    return {k: n for k, n in load.statuses().items() if k[0] != 200 and k not in allowed}


async def test_no_fault_every_answered_call_has_exactly_one_row(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        tmp_path: Path) -> None:
    _, dsn = await pg_proxy()
    _, key_a = await new_project(db, "steady-a")
    _, key_b = await new_project(db, "steady-b")
    gw = await gateways(dsn, tmp_path / "gw")
    load = Load(gw.url, [key_a, key_b], clients=12, rate=120)
    await load.run(calls=300, duration_s=20)
    result, waited = await wait_ledger(db, load.answered_ids(), within_s=ROWS_WITHIN_S)
    report("none", calls=len(load.outcomes), answered=len(load.answered()),
           statuses=load.statuses(), ledger=result, rows_after_s=round(waited, 2))
    assert len(load.answered()) == 300, load.statuses()
    assert not result.missing and result.duplicates == 0, result
    assert result.total_rows == 300, result


async def test_refused_database_gives_no_500_and_loses_no_row(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        tmp_path: Path) -> None:
    """PostgreSQL refuses for 5 s under load. A budgeted project is served from its lease or
    answered 503 budget_unavailable, never 500; the tight budget's lease (at most what is
    left of it: about 4.5 s of its calls, 2 s of them spent before the cut) runs out
    during the outage. Every answered call's row arrives once PostgreSQL is back."""
    proxy, dsn = await pg_proxy()
    _, large = await new_project(db, "budget-large", monthly_budget_usd=Decimal("100"))
    _, tight = await new_project(db, "budget-tight", monthly_budget_usd=Decimal("0.0008"))
    _, plain = await new_project(db, "plain")
    gw = await gateways(dsn, tmp_path / "gw")
    load = Load(gw.url, [large, tight, plain], clients=12, rate=60)
    load.start(duration_s=30)
    await asyncio.sleep(2)
    await proxy.cut()
    await asyncio.sleep(5)
    await proxy.restore()
    restored = time.monotonic()
    await asyncio.sleep(2)
    await load.stop()
    result, waited = await wait_ledger(db, load.answered_ids(), within_s=ROWS_WITHIN_S)
    allowed = {large: {(503, "budget_unavailable")},
               tight: {(503, "budget_unavailable"), (402, "budget_exceeded")}, plain: set()}
    unexpected = {name: {k: n for k, n in load.statuses(key).items()
                         if k[0] != 200 and k not in allowed[key]}
                  for name, key in (("large", large), ("tight", tight), ("plain", plain))}
    slowest = max(o.finished - o.started for o in load.outcomes)
    report("refused 5 s", calls=len(load.outcomes), answered=len(load.answered()),
           slowest_call_s=round(slowest, 2),
           large=load.statuses(large), tight=load.statuses(tight), plain=load.statuses(plain),
           ledger=result, rows_complete_after_restore_s=round(time.monotonic() - restored, 2)
           if not result.missing else None, waited_s=round(waited, 2))
    assert not any(unexpected.values()), f"unexpected answers: {unexpected}"
    assert slowest < 2.5, f"a call waited {slowest:.2f} s"  # never a hang
    assert not result.missing and result.duplicates == 0, result


async def test_a_partition_stalls_no_one_and_spills_its_rows(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        tmp_path: Path) -> None:
    proxy, dsn = await pg_proxy()
    _, key_a = await new_project(db, "partitioned-a")
    _, key_b = await new_project(db, "partitioned-b")
    gw = await gateways(dsn, tmp_path / "gw", GATEWAY_LEDGER_FLUSH_TIMEOUT_S="2")
    load = Load(gw.url, [key_a, key_b], clients=12, rate=60)
    load.start(duration_s=30)
    await asyncio.sleep(3)
    baseline_from = time.monotonic() - 2.5
    baseline = len(load.answered(baseline_from)) / 2.5  # answered per second, no fault
    holed = time.monotonic()
    await proxy.black_hole()
    spill_bytes: list[float] = []
    on_disk: list[int] = []
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - holed < 8:
            value = await metric(http, gw, "gateway_ledger_spill_bytes")
            spill_bytes.append(-1 if value is None else value)
            on_disk.append(dir_bytes(gw.data_dir))
            await asyncio.sleep(0.5)
    await proxy.restore()
    restored = time.monotonic()
    await asyncio.sleep(1)
    await load.stop()
    second_half = len(load.answered(holed + 4, holed + 8)) / 4
    during = [o for o in load.outcomes if holed <= o.started < restored]
    slowest = max((o.finished - o.started for o in during), default=0.0)
    failed = fault_statuses(load)
    result, waited = await wait_ledger(db, load.answered_ids(), within_s=ROWS_WITHIN_S)
    report("partition 8 s", baseline_per_s=round(baseline, 1),
           second_half_per_s=round(second_half, 1), slowest_call_s=round(slowest, 2),
           not_answered=failed, max_spill_bytes=max(spill_bytes, default=None),
           max_disk_bytes=max(on_disk, default=None), ledger=result,
           rows_after_restore_s=round(time.monotonic() - restored, 2), waited_s=round(waited, 2),
           ledger_events=[(e["event"], e.get("error", "")[:80]) for e in gw.log
                          if str(e.get("event", "")).startswith(("ledger_", "budget_"))][:8])
    assert baseline > 20, f"the load did not run: {load.statuses()}"
    assert second_half >= baseline / 2, (
        f"stalled: {second_half:.1f} answered/s in the partition's second half against "
        f"{baseline:.1f} before it")
    assert not failed, f"calls not answered during the partition: {failed}"
    assert slowest < 2.0, f"a call waited {slowest:.2f} s during the partition"
    assert max(spill_bytes) > 0, (
        f"nothing spilled during the partition (gateway_ledger_spill_bytes {spill_bytes})")
    assert not result.missing and result.duplicates == 0, result


async def test_sigkill_during_a_partition_loses_no_answered_call(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        tmp_path: Path) -> None:
    proxy, dsn = await pg_proxy()
    _, key_a = await new_project(db, "killed-a")
    _, key_b = await new_project(db, "killed-b")
    data_dir = tmp_path / "gw"
    gw = await gateways(dsn, data_dir)
    load = Load(gw.url, [key_a, key_b], clients=12, rate=60)
    load.start(duration_s=30)
    await asyncio.sleep(2)
    await proxy.black_hole()
    await asyncio.sleep(3)
    gw.signal(signal.SIGKILL)
    await gw.wait_exit(10)
    await load.stop()
    in_db = await check_ledger(db, load.answered_ids())
    await proxy.restore()
    again = await gateways(dsn, data_dir)
    result, waited = await wait_ledger(db, load.answered_ids(), within_s=ROWS_WITHIN_S)
    report("SIGKILL 3 s into a partition", answered=len(load.answered()),
           stored_before_restart=in_db.stored, ledger=result, replay_s=round(waited, 2),
           replayed_events=len(again.events("ledger_spill_replayed")))
    assert len(load.answered()) > 100, load.statuses()
    assert not result.missing and result.duplicates == 0, result


async def test_sigterm_during_a_partition_exits_within_the_deadline_and_loses_nothing(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        tmp_path: Path) -> None:
    shutdown_timeout = 3.0
    proxy, dsn = await pg_proxy()
    _, key_a = await new_project(db, "stopped-a")
    _, key_b = await new_project(db, "stopped-b")
    data_dir = tmp_path / "gw"
    gw = await gateways(dsn, data_dir, GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S=str(shutdown_timeout))
    load = Load(gw.url, [key_a, key_b], clients=12, rate=60)
    load.start(duration_s=30)
    await asyncio.sleep(2)
    await proxy.black_hole()
    await asyncio.sleep(2)
    gw.signal(signal.SIGTERM)
    try:
        exit_s = await gw.wait_exit(shutdown_timeout + 20)
    except TimeoutError:
        exit_s = float("inf")
        await gw.kill()
    await load.stop()
    await proxy.restore()
    again = await gateways(dsn, data_dir)
    result, waited = await wait_ledger(db, load.answered_ids(), within_s=ROWS_WITHIN_S)
    report("SIGTERM during a partition", shutdown_timeout_s=shutdown_timeout,
           exit_s=round(exit_s, 2), returncode=gw.process.returncode,
           shutdown_log=shutdown_events(gw),
           answered=len(load.answered()), ledger=result, replay_s=round(waited, 2),
           replayed_events=len(again.events("ledger_spill_replayed")))
    assert exit_s <= shutdown_timeout + 3, f"exit {exit_s:.2f} s after SIGTERM"
    assert not result.missing and result.duplicates == 0, result


async def test_sigkill_with_the_database_up_loses_no_answered_call(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        tmp_path: Path) -> None:
    _, dsn = await pg_proxy()
    _, key_a = await new_project(db, "sigkill-a")
    _, key_b = await new_project(db, "sigkill-b")
    data_dir = tmp_path / "gw"
    gw = await gateways(dsn, data_dir)
    load = Load(gw.url, [key_a, key_b], clients=12, rate=60)
    load.start(duration_s=30)
    await asyncio.sleep(3)
    gw.signal(signal.SIGKILL)
    await gw.wait_exit(10)
    await load.stop()
    in_db = await check_ledger(db, load.answered_ids())
    again = await gateways(dsn, data_dir)
    result, waited = await wait_ledger(db, load.answered_ids(), within_s=ROWS_WITHIN_S)
    report("SIGKILL, database up", answered=len(load.answered()),
           missing_at_kill=len(in_db.missing), ledger=result, replay_s=round(waited, 2),
           replayed_events=len(again.events("ledger_spill_replayed")))
    assert len(load.answered()) > 100, load.statuses()
    assert not result.missing and result.duplicates == 0, result


async def _lease_of(db: asyncpg.Connection, project_id: int, pid: int) -> Decimal:
    """What the process `pid` holds leased on the project's budget (holder: host:pid:random)."""
    amount: Decimal = await db.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM budget_leases WHERE scope = 'project' "
        "AND scope_id = $1 AND split_part(holder, ':', 2) = $2", project_id, str(pid))
    return amount


async def test_a_replica_cut_off_while_holding_a_lease_cannot_overspend_the_budget(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    """Replica A leases budget, is cut from PostgreSQL just after a grant, serves on from its
    lease, and is stopped while still cut off; replica B serves until refused, and on past
    the moment A's lease expires (30 s). Once A's rows are replayed, the project's spend
    (its usage rows) is within its budget."""
    budget = Decimal("0.02")
    max_tokens = 600  # the fake answers all of them: each call costs about its worst case
    per_call = Decimal(max_tokens) * Decimal("0.60") / 10**6  # gpt-4o-mini output price
    fake_upstream.state.reply_tokens = max_tokens
    project_id, key = await new_project(db, "shared-budget", monthly_budget_usd=budget)
    proxy_a, dsn_a = await pg_proxy()
    _, dsn_b = await pg_proxy()
    dir_a = tmp_path / "a"
    a = await gateways(dsn_a, dir_a, GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S="3")
    b = await gateways(dsn_b, tmp_path / "b", GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S="3")

    def body(stream: bool) -> dict[str, Any]:
        return chat(stream=stream, max_tokens=max_tokens)

    load_a = Load(a.url, [key], clients=3, rate=6, body=body)
    load_b = Load(b.url, [key], clients=2, rate=2, body=body)
    load_a.start(duration_s=60)
    load_b.start(duration_s=60)
    # Cut A off once it has answered a call (so it knows the project's key and credentials)
    # and holds a lease with room for a few more. (Near the limit a process is granted only
    # what the call in hand needs; its first lease is for four calls.)
    lease_at_cut = Decimal(0)
    watch_from = time.monotonic()
    while time.monotonic() - watch_from < 8:
        lease_at_cut = await _lease_of(db, project_id, a.process.pid)
        if lease_at_cut >= 3 * per_call and load_a.answered():
            break
        await asyncio.sleep(0.02)
    await proxy_a.cut()
    cut = time.monotonic()
    answered_a_before_cut = len(load_a.answered(until=cut))
    await asyncio.sleep(3)
    a.signal(signal.SIGTERM)
    try:
        a_exit_s = await a.wait_exit(20)
    except TimeoutError:
        a_exit_s = float("inf")
        await a.kill()
    await load_a.stop()
    answered_a_while_cut = len(load_a.answered(since=cut))
    # B serves until it is refused, and keeps asking past the expiry of A's lease (30 s
    # after A's last exchange with PostgreSQL, which was before the cut).
    await asyncio.sleep(max(34 - (time.monotonic() - cut), 0))
    await load_b.stop()
    b.signal(signal.SIGTERM)
    await b.wait_exit(20)
    await proxy_a.restore()
    a2 = await gateways(dsn_a, dir_a)
    answered = load_a.answered_ids() | load_b.answered_ids()
    result, _ = await wait_ledger(db, answered, within_s=ROWS_WITHIN_S)
    a2.signal(signal.SIGTERM)
    await a2.wait_exit(20)
    spent = await project_spend(db, project_id)
    periods = await db.fetchrow("SELECT spent_usd, leased_usd FROM budget_periods "
                                "WHERE scope = 'project' AND scope_id = $1", project_id)
    reclaimed = await db.fetchval("SELECT coalesce(sum(amount), 0) FROM budget_reclaimed "
                                  "WHERE scope = 'project' AND scope_id = $1", project_id)
    b_last = [(o.status, o.code) for o in load_b.outcomes[-4:]]
    # Clear 503s saying which store is out of reach are the rule's answers; anything else
    # of 5xx (a 500 above all) is not.
    unreachable = {(503, "budget_unavailable"), (503, "credentials_unavailable"),
                   (503, "auth_unavailable")}
    server_errors = {k: n for load in (load_a, load_b) for k, n in load.statuses().items()
                     if k[0] >= 500 and k not in unreachable}
    overspend = max(spent - budget, Decimal(0))
    report("two replicas, one cut off with a lease", budget=budget, spent=spent,
           overspend=overspend, overspend_pct=round(float(overspend / budget * 100), 1),
           lease_at_cut=lease_at_cut, per_call=per_call, a_before_cut=answered_a_before_cut,
           a_while_cut=answered_a_while_cut, a=load_a.statuses(), b=load_b.statuses(),
           b_last=b_last, a_exit_s=round(a_exit_s, 2), ledger=result,
           budget_period=dict(periods) if periods else None, reclaimed=reclaimed)
    assert lease_at_cut > 0, "A held no lease when it was cut off (the test's own setup)"
    assert b_last and all(s == 402 for s, _ in b_last), f"B was never refused: {b_last}"
    assert not result.missing and result.duplicates == 0, result
    assert spent <= budget, f"overspent: {spent} of {budget}"
    assert not server_errors, server_errors


async def test_sigterm_cuts_a_slow_stream_within_the_deadline_and_records_it_as_shutdown(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    shutdown_timeout = 2.0
    _, dsn = await pg_proxy()
    _, key = await new_project(db, "slow-stream")
    data_dir = tmp_path / "gw"
    gw = await gateways(dsn, data_dir,
                        GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S=str(shutdown_timeout))
    fake_upstream.script({"chunk_delay_ms": 1000})  # 12 tokens: a stream of about 12 s
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat(stream=True),
                             headers={"Authorization": f"Bearer {key}"},
                             timeout=aiohttp.ClientTimeout(total=20)) as resp:
            assert resp.status == 200
            request_id = resp.headers[REQUEST_ID_HEADER]
            await resp.content.readany()  # the stream is under way
            gw.signal(signal.SIGTERM)
            received = b""
            try:
                async with asyncio.timeout(15):
                    async for chunk in resp.content.iter_any():
                        received += chunk
            except (aiohttp.ClientError, TimeoutError):
                pass
    try:
        exit_s = await gw.wait_exit(20)
    except TimeoutError:
        exit_s = float("inf")
        await gw.kill()
    row = await db.fetchrow("SELECT status, error_code FROM usage_records "
                            "WHERE request_id = $1::uuid", request_id)
    replayed = row is None
    if row is None:  # left on disk: the next process replays it
        await gateways(dsn, data_dir)
        await wait_ledger(db, {request_id}, within_s=ROWS_WITHIN_S)
        row = await db.fetchrow("SELECT status, error_code FROM usage_records "
                                "WHERE request_id = $1::uuid", request_id)
    report("SIGTERM, slow stream", shutdown_timeout_s=shutdown_timeout,
           exit_s=round(exit_s, 2), stream_done=b"[DONE]" in received,
           row=dict(row) if row else None, row_needed_a_restart=replayed)
    assert exit_s <= shutdown_timeout + 1.5, f"exit {exit_s:.2f} s after SIGTERM"
    assert row is not None, "the cut stream has no row"
    assert row["error_code"] == "gateway_shutdown", dict(row)


async def test_the_gateway_starts_without_the_database_and_replays_what_a_dead_one_left(
        db: asyncpg.Connection, pg_proxy: ProxyFactory, gateways: GatewayStarter,
        tmp_path: Path) -> None:
    proxy, dsn = await pg_proxy()
    _, key = await new_project(db, "restarted")
    data_dir = tmp_path / "gw"
    first = await gateways(dsn, data_dir, GATEWAY_LEDGER_FLUSH_INTERVAL_S="60",
                           GATEWAY_LEDGER_BATCH_SIZE="1000")
    load = Load(first.url, [key], clients=4, rate=100)
    await load.run(calls=40, duration_s=15)
    first.signal(signal.SIGKILL)
    await first.wait_exit(10)
    left = dir_bytes(data_dir)
    stored_at_kill = (await check_ledger(db, load.answered_ids())).stored
    await proxy.cut()
    started = time.monotonic()
    second = await gateways(dsn, data_dir)
    start_s = time.monotonic() - started
    async with aiohttp.ClientSession() as http:
        down_status = await ready_status(http, second)
        await proxy.restore()
        restored = time.monotonic()
        up_status = down_status
        while time.monotonic() - restored < 15 and up_status != 200:
            await asyncio.sleep(0.2)
            up_status = await ready_status(http, second)
        ready_s = time.monotonic() - restored
    result, waited = await wait_ledger(db, load.answered_ids(), within_s=ROWS_WITHIN_S)
    report("started while the database is down", answered=len(load.answered()),
           left_on_disk_bytes=left, stored_at_kill=stored_at_kill,
           start_s=round(start_s, 2), ready_while_down=down_status,
           ready_after_restore=up_status, ready_after_s=round(ready_s, 2), ledger=result,
           replay_s=round(waited, 2))
    assert len(load.answered()) == 40, load.statuses()
    assert left > 0 and stored_at_kill < 40
    assert down_status == 503, f"readiness {down_status} while the database is down"
    assert up_status == 200, f"not ready {ready_s:.1f} s after the database came back"
    assert not result.missing and result.duplicates == 0, result
