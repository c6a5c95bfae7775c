"""Client connections over real sockets: read deadlines, the connection cap, JSON parse errors.

The gateway runs as `gateway serve` runs it (`connections.make_runner` + `web.TCPSite`) on
127.0.0.1; the clients are raw sockets, so a test can stall mid-headers or mid-body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import ADMIN_TOKEN, SettingsFactory

from gateway.app import build_app
from gateway.connections import ConnectionServer, make_runner

TIMEOUT_S = 0.5  # the header and body deadlines in these tests
SLACK_S = 1.5  # how much later than a deadline a close may come and still pass


@dataclass
class Served:
    host: str
    port: int
    server: ConnectionServer

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    closed: bool  # the server closed the connection after it


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(make_settings: SettingsFactory, db: Any) -> AsyncIterator[ServeFactory]:
    runners: list[web.AppRunner] = []

    async def start(**server: Any) -> Served:
        settings = make_settings(server={"header_timeout_s": TIMEOUT_S,
                                         "body_timeout_s": TIMEOUT_S, **server})
        runner = make_runner(build_app(settings))
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert isinstance(runner.server, ConnectionServer)
        return Served("127.0.0.1", runner.addresses[0][1], runner.server)

    yield start
    for runner in runners:
        await runner.cleanup()


async def connect(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(served.host, served.port)


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def read_answer(reader: asyncio.StreamReader, *, within_s: float) -> Answer:
    """One response (framed by Content-Length), and whether the server then closed."""
    async with asyncio.timeout(within_s):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        raw = await reader.readexactly(int(headers["content-length"]))
        closed = headers.get("connection", "").lower() == "close" and await reader.read() == b""
    body = orjson.loads(raw) if headers.get("content-type", "").startswith(
        "application/json") else raw
    return Answer(status, headers, body, closed)


async def closed_within(reader: asyncio.StreamReader, within_s: float) -> bytes:
    """Everything the server sends until it closes; fails if it has not closed in time."""
    async with asyncio.timeout(within_s):
        return await reader.read()


async def until(condition: Callable[[], bool], *, within_s: float = 2.0) -> None:
    """The server has no event for "it read those bytes": poll its state, bounded."""
    for _ in range(int(within_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not within {within_s} s")


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


HEALTH = request("GET", "/api/health/live")
ADMIN = f"Authorization: Bearer {ADMIN_TOKEN}"
# headers promising a body that never comes (admin auth passes, then the body is read)
NO_BODY = request("POST", "/api/admin/projects", ADMIN, "Content-Type: application/json",
                  "Content-Length: 100")


def gateway_shape(answer: Answer, code: str) -> None:
    assert answer.headers["content-type"].startswith("application/json")
    assert set(answer.body) == {"error", "code", "requestId", "details"}, answer.body
    assert answer.body["code"] == code, answer.body
    assert answer.headers["x-ai-cost-gateway-request-id"] == answer.body["requestId"]


# -- body deadline -----------------------------------------------------------------------------

async def test_headers_then_no_body_answers_408_and_closes(serve: ServeFactory) -> None:
    served = await serve(header_timeout_s=30)
    reader, writer = await connect(served)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await send(writer, NO_BODY)
    answer = await read_answer(reader, within_s=TIMEOUT_S + SLACK_S)
    elapsed = loop.time() - started
    assert answer.status == 408
    gateway_shape(answer, "request_timeout")
    assert "body" in answer.body["error"]
    assert answer.closed
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + SLACK_S
    writer.close()


async def test_slow_body_on_v1_answers_408_in_openai_shape(serve: ServeFactory) -> None:
    served = await serve()
    async with aiohttp.ClientSession(served.url) as http:
        resp = await http.post("/api/admin/projects", json={"name": "slow"},
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert resp.status == 201, await resp.text()
        project = await resp.json()
        resp = await http.post(f"/api/admin/projects/{project['id']}/keys", json={},
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        key = (await resp.json())["key"]
    reader, writer = await connect(served)
    await send(writer, request("POST", "/v1/chat/completions", f"Authorization: Bearer {key}",
                               "Content-Type: application/json", "Content-Length: 500",
                               body=b'{"model": "gpt-4o-mini", "mess'))
    answer = await read_answer(reader, within_s=TIMEOUT_S + SLACK_S)
    assert answer.status == 408
    assert answer.body["error"]["code"] == "request_timeout"
    assert answer.body["error"]["type"] == "invalid_request_error"
    assert answer.closed
    writer.close()


async def test_a_body_that_arrives_in_time_is_served_and_kept_alive(
        serve: ServeFactory) -> None:
    served = await serve()
    reader, writer = await connect(served)
    body = orjson.dumps({"name": "in-time"})
    await send(writer, request("POST", "/api/admin/projects", ADMIN,
                               "Content-Type: application/json",
                               f"Content-Length: {len(body)}") + body[:5])
    await send(writer, body[5:])
    answer = await read_answer(reader, within_s=5)
    assert answer.status == 201, answer.body
    assert not answer.closed
    # the body deadline of that request does not close the connection later on
    await asyncio.sleep(TIMEOUT_S * 2)
    await send(writer, HEALTH)
    assert (await read_answer(reader, within_s=5)).status == 200
    writer.close()


async def test_a_request_answered_before_its_body_is_not_cut_by_the_body_deadline(
        serve: ServeFactory) -> None:
    served = await serve()
    reader, writer = await connect(served)
    await send(writer, request("POST", "/api/admin/projects", "Content-Length: 100"))
    answer = await read_answer(reader, within_s=5)
    assert answer.status == 401  # no admin token: answered without reading the body
    # aiohttp reads the rest for its lingering time; the body deadline no longer applies
    with pytest.raises(TimeoutError):
        await closed_within(reader, TIMEOUT_S * 3)
    writer.close()


# -- header deadline ---------------------------------------------------------------------------

async def test_partial_headers_answer_408_and_close(serve: ServeFactory) -> None:
    served = await serve()
    reader, writer = await connect(served)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await send(writer, b"GET /api/health/live HTTP/1.1\r\nHost: gateway\r\nX-Slow: ab")
    answer = await read_answer(reader, within_s=TIMEOUT_S + SLACK_S)
    assert TIMEOUT_S * 0.9 <= loop.time() - started < TIMEOUT_S + SLACK_S
    assert answer.status == 408
    gateway_shape(answer, "request_timeout")
    assert "headers" in answer.body["error"]
    assert answer.closed
    writer.close()


async def test_partial_headers_on_v1_answer_in_openai_shape(serve: ServeFactory) -> None:
    served = await serve()
    reader, writer = await connect(served)
    await send(writer, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
    answer = await read_answer(reader, within_s=TIMEOUT_S + SLACK_S)
    assert answer.status == 408
    assert answer.body["error"]["code"] == "request_timeout"
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed(serve: ServeFactory) -> None:
    served = await serve()
    reader, writer = await connect(served)
    assert await closed_within(reader, TIMEOUT_S + SLACK_S) == b""
    writer.close()


async def test_idle_keep_alive_is_not_cut_by_the_header_deadline(serve: ServeFactory) -> None:
    served = await serve()
    reader, writer = await connect(served)
    await send(writer, HEALTH)
    assert (await read_answer(reader, within_s=5)).status == 200
    await asyncio.sleep(TIMEOUT_S * 2)  # idle past the header deadline: keep-alive holds
    await send(writer, HEALTH)
    assert (await read_answer(reader, within_s=5)).status == 200
    writer.close()


async def test_fifty_slow_clients_are_closed_while_others_are_served(
        serve: ServeFactory) -> None:
    served = await serve(header_timeout_s=1.0, body_timeout_s=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = []
    for i in range(50):
        reader, writer = await connect(served)
        await send(writer, NO_BODY if i % 2 else HEALTH[:30])
        slow.append((reader, writer))
    served_meanwhile = 0
    async with aiohttp.ClientSession(served.url) as http:
        while loop.time() - started < 0.8:  # bounded: before any slow client is closed
            async with http.get("/api/health/live") as resp:
                assert resp.status == 200
                served_meanwhile += 1
    assert served_meanwhile >= 10
    assert all(not reader.at_eof() for reader, _ in slow)
    leftovers = await asyncio.gather(*(closed_within(r, 1.0 + SLACK_S) for r, _ in slow))
    assert loop.time() - started < 1.0 + SLACK_S
    assert all(b" 408 " in data.split(b"\r\n", 1)[0] for data in leftovers)
    await until(lambda: not served.server.open)
    for _, writer in slow:
        writer.close()


# -- the connection cap ------------------------------------------------------------------------

async def test_at_the_cap_the_oldest_idle_connection_makes_room(serve: ServeFactory) -> None:
    served = await serve(max_connections=5, header_timeout_s=30)
    clients = []
    for _ in range(5):
        reader, writer = await connect(served)
        await send(writer, HEALTH)
        assert (await read_answer(reader, within_s=5)).status == 200
        clients.append((reader, writer))
    await until(lambda: len(served.server.idle) == 5)
    reader, writer = await connect(served)
    await send(writer, HEALTH)
    assert (await read_answer(reader, within_s=5)).status == 200
    assert await closed_within(clients[0][0], 2) == b""  # the oldest idle one
    for other, other_writer in clients[1:]:  # the others are still open and served
        await send(other_writer, HEALTH)
        assert (await read_answer(other, within_s=5)).status == 200
    assert served.server.evicted == 1
    assert len(served.server.open) == 5
    for _, w in [*clients, (reader, writer)]:
        w.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused(
        serve: ServeFactory) -> None:
    served = await serve(max_connections=5, header_timeout_s=30, body_timeout_s=30)
    busy = []
    for i in range(5):
        reader, writer = await connect(served)
        await send(writer, NO_BODY if i % 2 else HEALTH[:30])
        busy.append((reader, writer))
    await until(lambda: len(served.server.open) == 5 and not served.server.idle)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await connect(served)
    answer = await read_answer(reader, within_s=2)
    assert loop.time() - started < 1.0
    assert answer.status == 503
    gateway_shape(answer, "too_many_connections")
    assert answer.headers["retry-after"] == "1"
    assert answer.closed
    assert served.server.refused == 1
    assert all(not r.at_eof() for r, _ in busy)  # the busy ones are untouched
    for _, w in [*busy, (reader, writer)]:
        w.close()


# -- malformed requests answer JSON ------------------------------------------------------------

@pytest.mark.parametrize(("data", "status", "code"), [
    (request("GET", "/api/health/live", "X-Big: " + "a" * 9000), 431, "headers_too_large"),
    (request("GET", "/api/health/live", *(f"X-H{i}: v" for i in range(200))), 431,
     "headers_too_large"),
    (request("GET", "/api/" + "a" * 9000), 414, "uri_too_long"),
    (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
    (b"GET /api/health/live HTTP/1.1\r\nHost: gateway\r\nBad Header\r\n\r\n", 400,
     "bad_request"),
])
async def test_malformed_requests_answer_json_in_the_gateway_shape(
        serve: ServeFactory, data: bytes, status: int, code: str) -> None:
    served = await serve()
    reader, writer = await connect(served)
    await send(writer, data)
    answer = await read_answer(reader, within_s=5)
    assert answer.status == status
    gateway_shape(answer, code)
    assert answer.closed
    writer.close()


async def test_headers_too_large_on_v1_answer_in_openai_shape(serve: ServeFactory) -> None:
    served = await serve()
    reader, writer = await connect(served)
    await send(writer, request("POST", "/v1/chat/completions", "X-Big: " + "a" * 9000))
    answer = await read_answer(reader, within_s=5)
    assert answer.status == 431
    assert answer.body["error"]["code"] == "headers_too_large"
    assert answer.body["error"]["type"] == "invalid_request_error"
    writer.close()
