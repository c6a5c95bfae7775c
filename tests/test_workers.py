"""`gateway serve --workers N`: N processes on one port, the limits exact across them, a
worker that dies restarted, SIGTERM draining them all; and the counts it refuses."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import ROOT, FakeUpstream, away_from_a_minute_edge, chat_body

from gateway import projects, workers
from gateway.settings import SettingsError, settings_from_mapping

WORKERS = 2


def test_the_default_is_one_per_core_where_limits_are_shared() -> None:
    shared = settings_from_mapping({"ratelimit": {"backend": "redis"}}, {})
    assert workers.worker_count(None, shared) == workers.cores()
    assert workers.worker_count(None, shared, demo=True) == 1
    assert workers.worker_count(None, settings_from_mapping({}, {})) == 1  # memory: per process
    assert workers.worker_count(3, shared) == 3


@pytest.mark.parametrize("count, ratelimit, demo, says", [
    (2, {}, False, "per_process_limits"),
    (2, {"backend": "redis"}, True, "--demo"),
    (0, {"backend": "redis"}, False, "1 or more"),
])
def test_counts_that_would_be_wrong_are_refused(count: int, ratelimit: dict[str, str],
                                                demo: bool, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        workers.worker_count(count, settings_from_mapping({"ratelimit": ratelimit}, {}), demo=demo)


def test_per_process_limits_can_be_accepted_explicitly() -> None:
    settings = settings_from_mapping({"ratelimit": {"per_process_limits": True}}, {})
    assert workers.worker_count(2, settings) == 2


async def test_memory_limits_with_several_workers_exit_2_saying_why() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", "2", cwd=ROOT,
        env={**os.environ, "GATEWAY_RATELIMIT_BACKEND": "memory"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"per-process limits" in err


class Server:
    """A `serve --workers N` parent process, its log read all the time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log: list[dict] = []
        self.changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            if line.startswith(b"{"):
                self.log.append(orjson.loads(line))
                self.changed.set()

    def events(self, name: str) -> list[dict]:
        return [e for e in self.log if e.get("event") == name]

    async def until(self, name: str, count: int, within_s: float = 30) -> list[dict]:
        async with asyncio.timeout(within_s):
            while len(self.events(name)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.events(name)

    async def exit(self, within_s: float = 40) -> int:
        code = await asyncio.wait_for(self.process.wait(), within_s)
        await self._reader
        return code


@pytest.fixture
async def server(database_url: str, redis_url: str, fake_upstream: FakeUpstream,
                 db: asyncpg.Connection) -> AsyncIterator[Server]:
    isolated = urlunsplit(urlsplit(redis_url)._replace(path="/12"))
    client = aioredis.from_url(isolated)
    await client.flushdb()
    await client.aclose()
    env = {"GATEWAY_DATABASE_URL": database_url, "OPENAI_BASE_URL": fake_upstream.url,
           "GATEWAY_RATELIMIT_BACKEND": "redis", "GATEWAY_REDIS_URL": isolated,
           "GATEWAY_LOGGING_LEVEL": "info", "GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S": "5"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", "0", "--workers", str(WORKERS),
        cwd=ROOT, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    running = Server(process)
    try:
        await running.until("gateway_listening", WORKERS)
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for event in running.events("gateway_listening"):  # no worker left behind
            try:
                os.kill(event["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


async def _calls(url: str, key: str, count: int, *, rid: str = "") -> list[int]:
    """`count` chat calls, each on a new connection (so the kernel picks a worker each time)."""
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for n in range(count):
            headers = {"Authorization": f"Bearer {key}"}
            if rid:
                headers["X-Request-Id"] = f"{rid}-{n % 5}"  # each id sent count / 5 times
            async with http.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=5),
                                 headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)
    return statuses


async def test_workers_share_the_port_the_load_and_exact_limits(
        server: Server, db: asyncpg.Connection) -> None:
    listening = server.events("gateway_listening")
    assert len({e["url"] for e in listening}) == 1  # one port
    pids = {e["pid"] for e in listening}
    assert len(pids) == WORKERS
    url = listening[0]["url"]
    await away_from_a_minute_edge(15)
    project = await projects.create_project(db, {
        "name": "workers", "monthly_budget_usd": Decimal("10"), "requests_per_minute": 30})
    _, key = await projects.issue_key(db, project["id"])
    statuses = await _calls(url, key, 40)
    assert statuses.count(200) == 30 and statuses.count(429) == 10  # one limit, not one each
    holders = await db.fetch("SELECT DISTINCT holder FROM budget_leases WHERE scope_id = $1",
                             project["id"])
    assert {int(h["holder"].split(":")[1]) for h in holders} == pids  # both served calls
    other = await projects.create_project(db, {"name": "workers-ids"})
    _, key2 = await projects.issue_key(db, other["id"])
    again = await _calls(url, key2, 20, rid="same")
    assert again.count(200) == 5 and again.count(409) == 15  # each id once across workers


async def test_a_dead_worker_is_replaced_and_sigterm_stops_them_all(
        server: Server, db: asyncpg.Connection) -> None:
    first = server.events("gateway_listening")
    url, victim = first[0]["url"], first[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    [died] = (await server.until("gateway_worker_died", 1))
    assert died["worker"] == first[0]["worker"] and died["restarting"] is True
    replaced = (await server.until("gateway_listening", WORKERS + 1))[-1]
    assert replaced["worker"] == first[0]["worker"] and replaced["pid"] != victim
    project = await projects.create_project(db, {"name": "after-restart"})
    _, key = await projects.issue_key(db, project["id"])
    assert await _calls(url, key, 10) == [200] * 10
    server.process.send_signal(signal.SIGTERM)
    assert await server.exit() == 0
    stopped = server.events("gateway_workers_stopped")
    assert stopped and stopped[0]["exitcodes"] == [0] * WORKERS
    rows = await db.fetchval("SELECT count(*) FROM usage_records WHERE project_id = $1",
                             project["id"])
    assert rows == 10  # every worker flushed its ledger on the way out


async def test_workers_do_not_outlive_a_killed_parent(server: Server) -> None:
    pids = [e["pid"] for e in server.events("gateway_listening")]
    server.process.kill()  # SIGKILL: the parent cannot stop them itself
    await server.exit()
    for _ in range(300):  # 30 s: each drains (SIGTERM from the kernel), then exits
        if not any(_alive(pid) for pid in pids):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"workers still running: {[p for p in pids if _alive(p)]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (exited, not reaped) is gone too
        return stat.read().split(")")[-1].split()[0] != "Z"
