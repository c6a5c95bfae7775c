"""`Answer` writes what aiohttp's own `web.Response` writes, byte for byte but the date."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiohttp import web

from gateway.http.answer import Answer

BODY = b'{"id":"chatcmpl-1","object":"chat.completion"}'
HEADERS = {"Content-Type": "application/json", "X-AI-Cost-Gateway-Cost": "0.0000123",
           "X-RateLimit-Remaining": "41"}


def app() -> web.Application:
    async def ours(request: web.Request) -> web.StreamResponse:
        return Answer(body=BODY, headers=HEADERS, status=int(request.query.get("status", 200)))

    async def aiohttps(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BODY, headers=HEADERS,
                            status=int(request.query.get("status", 200)))

    async def bad(request: web.Request) -> web.StreamResponse:
        cls = Answer if request.query.get("ours") else web.Response
        return cls(body=BODY, headers={"X-Evil": "a\r\nSet-Cookie: x=1"})

    application = web.Application()
    application.router.add_post("/ours", ours)
    application.router.add_post("/aiohttp", aiohttps)
    application.router.add_post("/bad", bad)
    return application


async def exchange(port: int, *requests: bytes) -> list[bytes]:
    """Send each request on one connection; each answer as its bytes (read to its length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            answers.append(head + await asyncio.wait_for(reader.readexactly(length), 5))
        answers.append(await asyncio.wait_for(reader.read(), 5) if b"close" in requests[-1]
                       else b"")
    finally:
        writer.close()
    return answers


def request(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: 2\r\n{extra}\r\n{{}}"
            .encode())


def undated(answer: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*", b"Date: -", answer)


@pytest.mark.parametrize(("query", "version", "extra"), [
    ("", "1.1", ""),
    ("", "1.1", "Connection: close\r\n"),
    ("", "1.0", ""),
    ("", "1.0", "Connection: keep-alive\r\n"),
    ("?status=201", "1.1", ""),
])
async def test_an_answer_is_what_aiohttp_writes(aiohttp_server: Any, query: str, version: str,
                                                extra: str) -> None:
    server = await aiohttp_server(app())
    ours = await exchange(server.port, request("/ours" + query, version, extra))
    theirs = await exchange(server.port, request("/aiohttp" + query, version, extra))
    assert [undated(a) for a in ours] == [undated(a) for a in theirs]
    assert ours[0].endswith(b"\r\n\r\n" + BODY) and b"\r\nDate: " in ours[0]


async def test_answers_keep_the_connection_alive(aiohttp_server: Any) -> None:
    server = await aiohttp_server(app())
    answers = await exchange(server.port, *(request("/ours") for _ in range(3)),
                             request("/ours", extra="Connection: close\r\n"))
    assert len(answers) == 5 and answers[-1] == b""  # the server closed after the last one
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") and a.endswith(BODY) for a in answers[:4])
    assert b"Connection: close" in answers[3] and b"Connection" not in answers[0]


async def test_a_header_with_a_line_break_is_refused_as_aiohttp_refuses_it(
        aiohttp_server: Any) -> None:
    """Neither writes a byte of such an answer: the connection is closed."""
    server = await aiohttp_server(app())
    for path in ("/bad?ours=1", "/bad"):
        with pytest.raises(asyncio.IncompleteReadError) as closed:
            await exchange(server.port, request(path))
        assert closed.value.partial == b""
