"""`gateway serve` as a real process: starts, serves, and drains on SIGTERM losing nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import orjson
import pytest
from conftest import ROOT, FakeUpstream, chat_body

from gateway import projects


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    log: list[dict]


async def start_gateway_process(env: dict[str, str], *args: str) -> Served:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", "0", *args,
        cwd=ROOT, env={**os.environ, **env}, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL)
    assert process.stderr is not None
    log: list[dict] = []
    async with asyncio.timeout(30):
        while True:
            line = await process.stderr.readline()
            if not line:
                raise AssertionError(f"gateway exited early: {log}")
            if line.startswith(b"{"):
                log.append(orjson.loads(line))
                if log[-1]["event"] == "gateway_listening":
                    return Served(process, log[-1]["url"], log)


async def wait_gateway_exit(served: Served) -> int:
    assert served.process.stderr is not None
    async with asyncio.timeout(30):
        async for line in served.process.stderr:
            if line.startswith(b"{"):
                served.log.append(orjson.loads(line))
        return await served.process.wait()


@pytest.fixture
async def served(database_url: str, fake_upstream: FakeUpstream,
                 db: asyncpg.Connection) -> AsyncIterator[tuple[Served, str]]:
    row = await projects.create_project(db, {"name": "served"})
    _, key = await projects.issue_key(db, row["id"])
    env = {"GATEWAY_DATABASE_URL": database_url, "OPENAI_BASE_URL": fake_upstream.url,
           "GATEWAY_SERVER_DRAIN_DELAY_S": "0.5", "GATEWAY_LEDGER_FLUSH_INTERVAL_S": "5",
           "GATEWAY_LOGGING_LEVEL": "info", "GATEWAY_LOGGING_REQUESTS": "true"}
    s = await start_gateway_process(env)
    try:
        yield s, key
    finally:
        if s.process.returncode is None:
            s.process.kill()
            await s.process.wait()


async def test_sigterm_drains_in_flight_requests_and_flushes_the_ledger(
        served: tuple[Served, str], fake_upstream: FakeUpstream, db: asyncpg.Connection) -> None:
    s, key = served
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        # fast requests whose rows sit in the ledger queue (flush interval is 5 s)
        for _ in range(5):
            async with http.post(f"{s.url}/v1/chat/completions", json=chat_body(),
                                 headers=auth) as resp:
                assert resp.status == 200
        fake_upstream.script({"delay_ms": 1200})
        slow = asyncio.create_task(http.post(f"{s.url}/v1/chat/completions", json=chat_body(),
                                             headers=auth))
        await asyncio.sleep(0.3)
        s.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with http.get(f"{s.url}/api/health/ready") as resp:  # draining, still serving
            assert resp.status == 503
            assert (await resp.json())["checks"]["draining"] is True
        async with http.get(f"{s.url}/api/health/live") as resp:
            assert resp.status == 200
        resp = await slow
        assert resp.status == 200  # the in-flight request finished
        assert (await resp.json())["object"] == "chat.completion"
    assert await wait_gateway_exit(s) == 0
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 6
    events = [e["event"] for e in s.log]
    assert events.index("gateway_draining") < events.index("gateway_stopped")
    assert events[-1] == "gateway_stopped"


async def test_logs_are_json_lines_with_request_ids_and_no_secrets(
        served: tuple[Served, str], fake_upstream: FakeUpstream) -> None:
    s, key = served
    secret_prompt = "my-very-secret-prompt-text"
    fake_upstream.script({"status": 500}, {"status": 500}, {"status": 500})  # and its retries
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{s.url}/v1/chat/completions", headers={
                "Authorization": f"Bearer {key}"}, json={
                "model": "gpt-4o", "messages": [{"role": "user", "content": secret_prompt}]}
                ) as resp:
            assert resp.status == 500
            request_id = resp.headers["X-AI-Cost-Gateway-Request-Id"]
    s.process.send_signal(signal.SIGTERM)
    await wait_gateway_exit(s)
    failures = [e for e in s.log if e["event"] == "request_failed"]
    assert failures and failures[0]["request_id"] == request_id
    assert failures[0]["status"] == 500 and "timestamp" in failures[0]
    [line] = [e for e in s.log if e["event"] == "request"]
    assert line["request_id"] == request_id and line["status"] == 500
    assert line["model"] == "gpt-4o" and line["error_code"] == "upstream_error"
    text = orjson.dumps(s.log).decode()
    assert key not in text and key.split("_", 2)[2] not in text
    assert secret_prompt not in text


async def test_a_wrong_setting_stops_the_start_with_a_clear_message() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", cwd=ROOT,
        env={**os.environ, "GATEWAY_SERVER_PORT": "http"}, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 2
    assert b"server.port" in err and b"expected int" in err
