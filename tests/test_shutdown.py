"""SIGTERM ends within `server.shutdown_timeout_s` (plus a small constant), and a stream the
gateway itself cuts is recorded as `gateway_shutdown`, not as the client's doing."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg
from conftest import FakeUpstream, chat_body
from test_serve import start_gateway_process, wait_gateway_exit

from gateway import projects
from gateway.shutdown import FLOOR_S, Shutdown


def test_one_deadline_from_sigterm() -> None:
    now = [100.0]
    shutdown = Shutdown(10.0, clock=lambda: now[0])
    assert not shutdown.started and shutdown.remaining() == 10.0
    shutdown.begin()
    now[0] += 4
    assert shutdown.started and shutdown.remaining() == 6.0
    assert shutdown.for_requests() == 5.0  # a second kept back for the teardown
    shutdown.begin()  # a second SIGTERM does not move the deadline
    now[0] += 20
    assert shutdown.remaining() == FLOOR_S == shutdown.for_requests()


async def test_sigterm_cuts_a_slow_stream_within_the_deadline_and_says_so(
        database_url: str, fake_upstream: FakeUpstream, db: asyncpg.Connection,
        tmp_path: Path) -> None:
    project = await projects.create_project(db, {"name": "shutdown"})
    _, key = await projects.issue_key(db, project["id"])
    served = await start_gateway_process({
        "GATEWAY_DATABASE_URL": database_url, "OPENAI_BASE_URL": fake_upstream.url,
        "GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S": "2"})
    fake_upstream.script({"chunk_delay_ms": 1000})  # a stream far longer than the deadline
    received = bytearray()
    first = asyncio.Event()

    async def read_stream(http: aiohttp.ClientSession) -> None:
        async with http.post(f"{served.url}/v1/chat/completions",
                             json=chat_body(stream=True),
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
            try:
                async for chunk in resp.content.iter_any():
                    received.extend(chunk)
                    first.set()
            except aiohttp.ClientPayloadError:
                pass  # the gateway ended the stream

    async with aiohttp.ClientSession() as http:
        reading = asyncio.create_task(read_stream(http))
        await asyncio.wait_for(first.wait(), 10)
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        assert await wait_gateway_exit(served) == 0
        took = time.monotonic() - started
        await asyncio.wait_for(reading, 5)
    assert took <= 2 + 1.0, took
    row = await db.fetchrow("SELECT status, error_code, streamed FROM usage_records")
    assert row is not None and row["streamed"]
    assert (row["status"], row["error_code"]) == (503, "gateway_shutdown")
