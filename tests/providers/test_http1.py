"""The lean HTTP/1.1 client against raw asyncio servers that answer byte for byte as told."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.errors import BadGateway, UpstreamTimeout
from gateway.pipeline.forward import read_body, send
from gateway.providers import create_adapter, http1
from gateway.providers.base import Upstream, UpstreamCall
from gateway.providers.http1 import Http1Client, Http1Closed, Http1ConnectError, Http1Error
from gateway.settings import settings_from_mapping

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
# A streamed answer's head and first chunk, and no more.
CHUNK_THEN_NOTHING = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
    assert found is not None
    return head, await reader.readexactly(int(found.group(1)))


def then_silent(data: bytes = b"") -> Handler:
    """A handler that reads the request, sends `data` (a head, part of a body, or nothing)
    and then nothing more, until the client closes the connection."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(data)
        await reader.read()

    return handle


class RawServer:
    """Runs `handler` for each connection; counts connections and their requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(handler: Handler, tls: ssl.SSLContext | None = None
                     ) -> AsyncIterator[RawServer]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0, ssl=tls)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()


def answering(*answers: bytes, close: bool = False) -> Handler:
    """A handler that reads requests and writes `answers` in turn (each as it is)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not close:
            await reader.read()  # keep the connection open until the client closes it
    return handle


def client(limit: int = 8, connect: float = 5.0, read: float = 5.0, total: float = 30.0,
           tls: ssl.SSLContext | None = None) -> Http1Client:
    return Http1Client(limit, connect, read, total, tls)


async def post(c: Http1Client, port: int, body: bytes = b"{}",
               headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    response = await c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                            headers or {"Content-Type": "application/json"}, body)
    try:
        return response.status, response.headers, await response.read()
    finally:
        response.release()


async def test_a_request_is_one_write_and_a_content_length_answer_is_read() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            seen.append(await read_request(reader))
            writer.write(OK)
        await reader.read()

    c = client()
    async with raw_server(handle) as server:
        for _ in range(2):
            status, headers, body = await post(c, server.port, b'{"a":1}',
                                               {"Authorization": "Bearer k"})
            assert (status, headers["content-type"], body) == (200, "application/json", b"{}")
        c.close()
    head, sent = seen[0]
    assert head == (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                    b"Content-Length: 7\r\nAuthorization: Bearer k\r\nUser-Agent: %s\r\n\r\n"
                    % (server.port, http1.USER_AGENT.encode()))
    assert sent == b'{"a":1}'
    assert server.connections == 1  # kept alive


async def test_a_user_agent_the_call_sets_is_the_only_one_sent() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await reader.read()

    c = client()
    async with raw_server(handle) as server:
        await post(c, server.port, b"{}", {"user-agent": "their-sdk/1.0"})
        c.close()
    head = seen[0][0].lower()
    assert head.count(b"user-agent:") == 1 and b"user-agent: their-sdk/1.0" in head


async def test_a_chunked_answer_one_byte_at_a_time() -> None:
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n"
              b"0\r\nX-Trailer: yes\r\n\r\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            for i in range(len(answer)):
                writer.write(answer[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        await reader.read()

    c = client()
    async with raw_server(handle) as server:
        for _ in range(2):
            assert (await post(c, server.port))[2] == b"hello 0123456789"
        c.close()
    assert server.connections == 1  # the connection served again after the trailers


async def test_an_answer_framed_by_the_close() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    async with raw_server(answering(answer, close=True)) as server:
        c = client()
        assert (await post(c, server.port))[2] == b"until the end"
        assert not c._pools[("http", "127.0.0.1", server.port)].idle  # not reusable
        c.close()


async def test_a_204_has_no_body_and_the_connection_serves_again() -> None:
    async with raw_server(answering(b"HTTP/1.1 204 No Content\r\n\r\n", OK)) as server:
        c = client()
        assert (await post(c, server.port))[::2] == (204, b"")
        assert (await post(c, server.port))[::2] == (200, b"{}")
        c.close()
    assert server.connections == 1


async def test_interim_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with raw_server(answering(answer)) as server:
        c = client()
        status, headers, body = await post(c, server.port)
        assert (status, body, "link" in headers) == (200, b"{}", False)
        c.close()


async def test_connection_close_is_respected() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(closing)
        await reader.read()  # the client must be the one to close

    async with raw_server(handle) as server:
        c = client()
        for _ in range(2):
            assert (await post(c, server.port))[2] == b"{}"
        c.close()
    assert server.connections == 2


async def test_repeated_headers_are_kept_and_names_match_in_any_case() -> None:
    answer = (b"HTTP/1.1 429 Too Many Requests\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
              b"Retry-After: 3\r\nContent-Length: 0\r\n\r\n")
    async with raw_server(answering(answer)) as server:
        c = client()
        status, headers, _ = await post(c, server.port)
        assert status == 429
        assert headers.getall("set-cookie") == ["a=1", "b=2"]
        assert headers["RETRY-AFTER"] == headers["retry-after"] == "3"
        assert dict(headers)["Retry-After"] == "3"  # as adapters' map_error receives them
        c.close()


async def test_a_pooled_connection_the_server_dropped_is_retried_once_on_a_new_one() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)  # a second request on this connection: dropped unanswered

    async with raw_server(handle) as server:
        c = client()
        assert [(await post(c, server.port))[2] for _ in range(3)] == [b"{}"] * 3
        c.close()
    assert server.connections == 3


async def test_a_new_connection_dropped_before_answering_is_not_retried() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(handle) as server:
        c = client()
        with pytest.raises(Http1Closed):
            await post(c, server.port)
        c.close()
    assert server.connections == 1


async def test_a_truncated_body_is_an_error() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"
    async with raw_server(answering(answer, close=True)) as server:
        c = client()
        with pytest.raises(Http1Closed, match="in the middle"):
            await post(c, server.port)
        c.close()


@pytest.mark.parametrize("answer", [
    b"SMTP ready\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra",
])
async def test_garbage_is_an_error(answer: bytes) -> None:
    async with raw_server(answering(answer)) as server:
        c = client()
        with pytest.raises(Http1Error):
            await post(c, server.port)
        c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_says_why() -> None:
    c = client()
    with pytest.raises(Http1ConnectError) as info:
        await post(c, free_port())
    assert isinstance(info.value.os_error, ConnectionRefusedError)
    c.close()


async def test_the_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(30)

    monkeypatch.setattr(loop, "create_connection", never)
    c = client(connect=0.1)
    started = loop.time()
    with pytest.raises(TimeoutError):
        await post(c, free_port())
    assert loop.time() - started < 1


async def test_the_first_byte_timeout() -> None:
    async with raw_server(then_silent()) as server:
        c = client(read=0.1)
        with pytest.raises(TimeoutError):
            await post(c, server.port)
        c.close()


async def test_a_stall_in_the_body_times_out() -> None:
    partial_body = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"
    async with raw_server(then_silent(partial_body)) as server:
        c = client(read=0.1)
        response = await c.post(f"http://127.0.0.1:{server.port}/", {}, b"")
        with pytest.raises(TimeoutError):
            await response.read()
        response.release()
        c.close()


async def test_the_total_timeout_bounds_a_trickle() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # a byte well within the read timeout, every time
            writer.write(b" ")
            await asyncio.sleep(0.02)

    async with raw_server(handle) as server:
        c = client(read=0.2, total=0.4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await post(c, server.port)
        assert 0.35 < loop.time() - started < 1.5
        c.close()


async def stream(c: Http1Client, port: int) -> http1.Http1Response:
    return await c.post(f"http://127.0.0.1:{port}/v1/chat/completions", {}, b"{}")


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
async def test_a_stream_is_read_as_it_arrives(framing: str) -> None:
    """Each piece reaches the reader before the server sends the next; after the last the
    connection serves again (unless the close framed the body)."""
    events = [b"data: {\"n\": %d}\n\n" % n for n in range(3)]
    head = {"chunked": b"Transfer-Encoding: chunked\r\n",
            "length": b"Content-Length: %d\r\n" % sum(map(len, events)),
            "close": b"Connection: close\r\n"}[framing]
    sent = asyncio.Queue[int]()
    read = asyncio.Queue[int]()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + head
                         + b"\r\n")
            for n, event in enumerate(events):
                writer.write(b"%x\r\n%s\r\n" % (len(event), event)
                             if framing == "chunked" else event)
                await writer.drain()
                sent.put_nowait(n)
                assert await read.get() == n  # the reader has it before the next is sent
            if framing == "chunked":
                writer.write(b"0\r\n\r\n")
            if framing == "close":
                return

    c = client()
    # A client that buffered would wait for the end while the server waits for it: bounded.
    async with raw_server(handle) as server, asyncio.timeout(10):
        for _ in range(2):
            response = await stream(c, server.port)
            pieces = []
            async for piece in response.iter_any():
                pieces.append(piece)
                read.put_nowait(await sent.get())
            assert b"".join(pieces) == b"".join(events) and len(pieces) == 3
            response.close()  # after the last piece: a no-op, the connection went back
        c.close()
    assert server.connections == (2 if framing == "close" else 1)


async def test_a_slow_reader_pauses_reading_and_that_is_no_stall() -> None:
    body = bytes(range(256)) * 16384  # 4 MiB

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await reader.read()

    async with raw_server(handle) as server:
        c = client(read=0.1)
        response = await stream(c, server.port)
        conn = response._conn
        pieces = []
        async for piece in response.iter_any():
            pieces.append(piece)
            if len(pieces) == 1:
                await asyncio.sleep(0.3)  # longer than the read timeout, while paused
                assert conn.paused
                # bounded: the mark plus what one read of the socket brings
                assert conn.parser.buffered <= http1.HIGH_WATER + 512 * 1024
        assert b"".join(pieces) == body
        assert not conn.paused and conn.reusable
        c.close()


async def test_a_large_body_read_whole_is_never_paused() -> None:
    """Only a stream pauses reading: `read()` waits for the whole body, so a pause there
    would wait for the read timeout (embeddings answers run to megabytes)."""
    body = bytes(range(256)) * 16384  # 4 MiB, far past the mark

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await reader.read()

    async with raw_server(handle) as server:
        c = client(read=1.0)
        status, _, got = await post(c, server.port)
        assert (status, got) == (200, body)
        c.close()


async def test_a_stream_cut_midway_raises_once_its_bytes_are_out() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"6\r\nfirst!\r\n")
        await writer.drain()

    async with raw_server(handle) as server:
        c = client()
        response = await stream(c, server.port)
        pieces = []
        with pytest.raises(Http1Closed, match="in the middle of its answer"):
            async for piece in response.iter_any():
                pieces.append(piece)
        assert pieces == [b"first!"]
        response.close()
        assert not c.slots.locked() and c.slots._value == 8  # the slot came back
        c.close()


async def test_a_stall_mid_stream_times_out() -> None:
    async with raw_server(then_silent(CHUNK_THEN_NOTHING)) as server:
        c = client(read=0.1)
        response = await stream(c, server.port)
        pieces = []
        with pytest.raises(TimeoutError):
            async for piece in response.iter_any():
                pieces.append(piece)
        assert pieces == [b"ok"]
        response.close()
        c.close()


async def test_an_abandoned_stream_closes_its_connection() -> None:
    async with raw_server(then_silent(CHUNK_THEN_NOTHING)) as server:  # never ends the body
        c = client(limit=1)
        for _ in range(2):  # one slot: the second call gets it only if the first freed it
            response = await stream(c, server.port)
            async for piece in response.iter_any():
                assert piece == b"ok"
                break
            response.close()
        assert server.connections == 2  # a connection in the middle of a body is not reused
        c.close()


async def test_the_pool_limit_holds_calls_until_a_connection_is_free() -> None:
    busy = 0
    most = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy, most
        while True:
            await read_request(reader)
            busy += 1
            most = max(most, busy)
            await asyncio.sleep(0.02)
            busy -= 1
            writer.write(OK)

    async with raw_server(handle) as server:
        c = client(limit=4)
        answers = await asyncio.gather(*(post(c, server.port) for _ in range(16)))
        assert [a[2] for a in answers] == [b"{}"] * 16
        c.close()
    assert most == 4
    assert server.connections == 4


async def test_waiting_for_a_connection_ends_with_the_total_and_loses_no_slot() -> None:
    """Every connection busy longer than a call's total: the waiting calls time out, and
    once the busy ones finish the pool has all its connections again."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(OK)

    async with raw_server(handle) as server:
        c = client(limit=2, total=0.3)
        busy = [asyncio.create_task(post(c, server.port)) for _ in range(2)]
        await asyncio.sleep(0.05)
        waiting = await asyncio.gather(*(post(c, server.port) for _ in range(6)),
                                       return_exceptions=True)
        assert all(isinstance(e, TimeoutError) for e in waiting), waiting
        release.set()
        await asyncio.gather(*busy, return_exceptions=True)  # over the total too
        answers = await asyncio.gather(*(post(c, server.port) for _ in range(4)))
        assert [a[2] for a in answers] == [b"{}"] * 4
        assert c.slots._value == 2  # every slot back
        c.close()


async def test_a_cancelled_call_frees_its_connection_and_closes_it() -> None:
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client closes
        closed.set()

    async with raw_server(handle) as server:
        c = client(limit=1)
        task = asyncio.create_task(post(c, server.port))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 2)
        assert not c.slots.locked()  # the one slot is free again
        c.close()


async def test_idle_connections_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "IDLE_S", 0.1)
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await reader.read()
        closed.set()

    async with raw_server(handle) as server:
        c = client()
        await post(c, server.port)
        await asyncio.wait_for(closed.wait(), 2)  # closed by the client, unasked
        assert not c._pools[("http", "127.0.0.1", server.port)].idle
        c.close()


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a new certificate for localhost, and a client one trusting it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    trusting = ssl.create_default_context(cafile=str(cert_path))
    return server, trusting


async def test_tls_through_the_upstream_with_an_injected_context(tmp_path: Path) -> None:
    server_tls, trusting = self_signed(tmp_path)
    async with raw_server(answering(OK, OK), tls=server_tls) as server:
        settings = settings_from_mapping({}, {}).providers["openai"]
        up = Upstream(create_adapter("openai", settings), settings, (), tls=trusting)
        await up.start()
        try:
            for _ in range(2):
                call = UpstreamCall(f"https://localhost:{server.port}/v1/chat/completions",
                                    {"Content-Type": "application/json"}, b"{}")
                assert await read_body(up, await send(up, call)) == b"{}"
        finally:
            await up.close()
    assert server.connections == 1


async def test_an_untrusted_certificate_is_unreachable(tmp_path: Path) -> None:
    server_tls, _ = self_signed(tmp_path)
    async with raw_server(answering(OK), tls=server_tls) as server:
        c = client()  # the default context: the system's authorities only
        with pytest.raises(Http1ConnectError):
            await c.post(f"https://localhost:{server.port}/", {}, b"")
        c.close()


async def test_failures_map_to_the_gateways_errors() -> None:
    settings = settings_from_mapping({"providers": {"openai": {
        "first_byte_timeout_s": 0.1}}}, {}).providers["openai"]
    up = Upstream(create_adapter("openai", settings), settings, ())
    await up.start()

    def call(port: int) -> UpstreamCall:
        return UpstreamCall(f"http://127.0.0.1:{port}/v1/chat/completions", {}, b"{}")

    try:
        with pytest.raises(BadGateway) as refused:
            await send(up, call(free_port()))
        assert refused.value.code == "upstream_unreachable"
        assert "unreachable: [Errno" in refused.value.message
        async with raw_server(answering(b"garbage\r\n\r\n")) as server:
            with pytest.raises(BadGateway) as garbage:
                await send(up, call(server.port))
        assert garbage.value.code == "upstream_connection_error"
        async with raw_server(then_silent()) as server:
            with pytest.raises(UpstreamTimeout):
                await send(up, call(server.port))
    finally:
        await up.close()


@pytest.mark.parametrize("scenario", [
    test_a_request_is_one_write_and_a_content_length_answer_is_read,
    test_a_chunked_answer_one_byte_at_a_time,
    test_an_answer_framed_by_the_close,
    test_connection_close_is_respected,
    test_a_pooled_connection_the_server_dropped_is_retried_once_on_a_new_one,
    test_a_truncated_body_is_an_error,
    test_a_refused_connection_says_why,
    test_the_first_byte_timeout,
    test_the_pool_limit_holds_calls_until_a_connection_is_free,
    test_a_cancelled_call_frees_its_connection_and_closes_it,
    test_failures_map_to_the_gateways_errors,
    test_a_slow_reader_pauses_reading_and_that_is_no_stall,
    test_a_large_body_read_whole_is_never_paused,
    test_a_stream_cut_midway_raises_once_its_bytes_are_out,
    test_an_abandoned_stream_closes_its_connection,
], ids=lambda scenario: scenario.__name__.removeprefix("test_"))
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """The gateway serves on uvloop, whose transports are not asyncio's classes."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())  # type: ignore[arg-type]
