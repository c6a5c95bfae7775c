"""The fault suite's tools: real `gateway serve` processes whose PostgreSQL is reached through a
`TcpProxy`, a small bounded load generator, and the ledger comparison (answered ids against
`usage_records`). Everything talks to 127.0.0.1 and every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from conftest import ROOT

from gateway import projects

REQUEST_ID_HEADER = "X-AI-Cost-Gateway-Request-Id"
CALL_TIMEOUT_S = 10.0  # one call of the load, whatever happens to the gateway


# -- gateway processes ------------------------------------------------------------------------


@dataclass
class GatewayProcess:
    """One `gateway serve` process; its stderr (JSON log lines) is read all the time, so a
    chatty fault never blocks it on a full pipe."""

    process: asyncio.subprocess.Process
    data_dir: Path
    env: dict[str, str]
    url: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    signalled_at: float | None = None  # monotonic time of the last signal sent
    exited_at: float | None = None

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e.get("event") == name]

    def signal(self, sig: signal.Signals) -> None:
        self.signalled_at = time.monotonic()
        if self.running:
            self.process.send_signal(sig)

    async def wait_exit(self, within_s: float = 30.0) -> float:
        """Wait for the process to exit; answer seconds since the last signal (or 0)."""
        async with asyncio.timeout(within_s):
            await self.process.wait()
            if self.reader is not None:
                await self.reader
        self.exited_at = self.exited_at or time.monotonic()
        return self.exited_at - (self.signalled_at or self.exited_at)

    async def kill(self) -> None:
        if self.running:
            self.process.kill()
        with contextlib.suppress(TimeoutError):
            await self.wait_exit(10)


async def start_gateway(database_dsn: str, upstream_url: str, data_dir: Path,
                        *, listening_within_s: float = 30.0, **env: str) -> GatewayProcess:
    """`gateway serve` on a free port, reaching PostgreSQL at `database_dsn` (a proxy), its
    spill and journal files under `data_dir`; extra settings as GATEWAY_* variables."""
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before the start)
    full_env = {"GATEWAY_DATABASE_URL": database_dsn, "OPENAI_BASE_URL": upstream_url,
                "OPENAI_API_KEY": "test-provider-key", "GATEWAY_DATA_DIR": str(data_dir),
                "GATEWAY_LOGGING_LEVEL": "info", "GATEWAY_LEDGER_FLUSH_INTERVAL_S": "0.1",
                **env}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", "0",
        cwd=ROOT, env={**os.environ, **full_env}, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL)
    gw = GatewayProcess(process, data_dir, full_env)
    listening = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            if not line.startswith(b"{"):
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                gw.log.append(event)
                if event.get("event") == "gateway_listening" and not listening.done():
                    listening.set_result(event["url"])
        gw.exited_at = time.monotonic()
        if not listening.done():
            listening.set_exception(AssertionError(f"gateway exited early: {gw.log[-5:]}"))

    gw.reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(listening_within_s):
            gw.url = await listening
    except BaseException:
        await gw.kill()
        raise
    return gw


async def metric(http: aiohttp.ClientSession, gw: GatewayProcess, name: str) -> float | None:
    """One unlabelled sample of the gateway's /metrics, or None (not there, no answer)."""
    try:
        async with http.get(f"{gw.url}/metrics",
                            timeout=aiohttp.ClientTimeout(total=2)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def ready_status(http: aiohttp.ClientSession, gw: GatewayProcess) -> int:
    try:
        async with http.get(f"{gw.url}/api/health/ready",
                            timeout=aiohttp.ClientTimeout(total=3)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


def dir_bytes(directory: Path) -> int:
    """Bytes in the files under `directory` (spill and journal files)."""
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


# -- load -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One call of the load: status 0 is a transport failure (reset, timeout)."""

    key: str
    streamed: bool
    started: float  # monotonic
    finished: float
    status: int
    code: str | None
    request_id: str | None
    complete: bool  # the whole answer arrived (a stream: up to its [DONE])

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.complete and self.request_id is not None


def chat(*, stream: bool, model: str = "gpt-4o-mini", max_tokens: int = 16) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Say hello"}]}


def error_code(data: bytes) -> str | None:
    """The code of an error body, in OpenAI's shape (`error.code`) or the flat one (`code`)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else body.get("code")
    return None if code is None else str(code)


class Load:
    """N clients calling `/v1/chat/completions` at about `rate` calls per second in all, half
    of them streamed, spread over the keys; until `stop()`, `calls` calls or `duration_s`."""

    def __init__(self, url: str | Callable[[], str], keys: list[str], *, clients: int = 12,
                 rate: float = 60.0, body: Callable[[bool], dict[str, Any]] | None = None
                 ) -> None:
        self._url = url if callable(url) else (lambda: url)
        self.keys = keys
        self.clients = clients
        self.rate = rate
        self.body = body or (lambda stream: chat(stream=stream))
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # results

    def answered(self, since: float = 0.0, until: float = float("inf"),
                 key: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.answered and since <= o.finished < until
                and (key is None or o.key == key)]

    def answered_ids(self) -> set[str]:
        return {o.request_id for o in self.outcomes if o.answered and o.request_id}

    def statuses(self, key: str | None = None) -> dict[tuple[int, str | None], int]:
        counts: dict[tuple[int, str | None], int] = {}
        for o in self.outcomes:
            if key is None or o.key == key:
                counts[(o.status, o.code)] = counts.get((o.status, o.code), 0) + 1
        return counts

    # running

    def start(self, *, calls: int | None = None, duration_s: float = 60.0) -> None:
        self._task = asyncio.create_task(self.run(calls=calls, duration_s=duration_s))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(CALL_TIMEOUT_S + 5):
                await self._task

    async def run(self, *, calls: int | None = None, duration_s: float = 60.0) -> None:
        counter = itertools.count()
        loop = asyncio.get_running_loop()
        began = loop.time()
        end = began + duration_s
        interval = self.clients / self.rate  # each client's pause between starts
        connector = aiohttp.TCPConnector(limit=self.clients * 2)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def client(offset: float) -> None:
                next_at = began + offset
                while not self._stop.is_set() and loop.time() < end:
                    n = next(counter)
                    if calls is not None and n >= calls:
                        return
                    await self._one(http, self.keys[n % len(self.keys)], stream=n % 2 == 1)
                    next_at += interval
                    pause = next_at - loop.time()
                    if pause > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), pause)
                    else:
                        next_at = loop.time()  # behind: do not burst to catch up

            await asyncio.gather(*(client(i * interval / self.clients)
                                   for i in range(self.clients)))

    async def _one(self, http: aiohttp.ClientSession, key: str, *, stream: bool) -> None:
        started = time.monotonic()
        status, code, request_id, complete = 0, None, None, False
        try:
            async with http.post(f"{self._url()}/v1/chat/completions", json=self.body(stream),
                                 headers={"Authorization": f"Bearer {key}"},
                                 timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)) as resp:
                status = resp.status
                request_id = resp.headers.get(REQUEST_ID_HEADER)
                data = await resp.read()
                if status == 200:
                    complete = b"[DONE]" in data if stream else data.startswith(b"{")
                else:
                    code = error_code(data)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            code = type(exc).__name__
        self.outcomes.append(Outcome(key, stream, started, time.monotonic(), status, code,
                                     request_id, complete))


# -- the ledger -------------------------------------------------------------------------------


@dataclass
class LedgerCheck:
    answered: int
    stored: int  # answered ids found in usage_records
    missing: list[str]
    duplicates: int  # rows beyond one per request_id (whole table)
    total_rows: int

    def __str__(self) -> str:
        return (f"answered {self.answered}, stored {self.stored}, missing {len(self.missing)} "
                f"{self.missing[:3]}, duplicates {self.duplicates}, rows {self.total_rows}")


async def check_ledger(db: asyncpg.Connection, answered: set[str]) -> LedgerCheck:
    found = {str(r["request_id"]) for r in await db.fetch(
        "SELECT request_id FROM usage_records WHERE request_id = ANY($1::uuid[])",
        list(answered))}
    total, distinct = await db.fetchrow(
        "SELECT count(*), count(DISTINCT request_id) FROM usage_records")
    return LedgerCheck(len(answered), len(found), sorted(answered - found),
                       total - distinct, total)


async def wait_ledger(db: asyncpg.Connection, answered: set[str],
                      within_s: float = 20.0) -> tuple[LedgerCheck, float]:
    """Poll until every answered id has its row (or `within_s`): (check, seconds waited)."""
    started = time.monotonic()
    while True:
        result = await check_ledger(db, answered)
        waited = time.monotonic() - started
        if not result.missing or waited > within_s:
            return result, waited
        await asyncio.sleep(0.1)


async def project_spend(db: asyncpg.Connection, project_id: int) -> Decimal:
    spent: Decimal = await db.fetchval(
        "SELECT coalesce(sum(cost_usd), 0) FROM usage_records WHERE project_id = $1",
        project_id)
    return spent


async def new_project(db: asyncpg.Connection, name: str, **fields: Any) -> tuple[int, str]:
    """A project (enterprise plan: no rate limit unless asked) and a key: (id, key)."""
    row = await projects.create_project(db, {"name": name, "plan": "enterprise", **fields})
    _, key = await projects.issue_key(db, row["id"])
    return row["id"], key
