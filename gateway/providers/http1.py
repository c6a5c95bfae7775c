"""A lean HTTP/1.1 client for the upstream POSTs, streamed or not.

aiohttp's client costs about 60 us of CPU per proxied call (measured in a bare proxy), most of
it framework: a request object, a payload writer, a stream reader and several timers. This
client writes the request as one bytes object and parses the answer in an `asyncio.Protocol`:
status line, headers, a body framed by Content-Length, chunked coding or the close. A body is
read whole (`read`) or as it arrives (`iter_any`, for event streams), with reading paused
while more than `HIGH_WATER` bytes wait for a slow reader.

The other upstream calls (the stored-response routes) stay on aiohttp. Timeouts are the
aiohttp session's: connect, read inactivity (first byte and every stall) and total. No
proxies, no redirects, no compression (the request asks for none).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final, cast
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from gateway import __version__
from gateway.providers.http1_wire import (
    Http1Closed,
    Http1ConnectError,
    Http1Error,
    ResponseParser,
)

__all__ = ["Http1Client", "Http1Closed", "Http1ConnectError", "Http1Error", "Http1Response"]

# aiohttp sent one of its own; some API fronts turn away a request without any.
USER_AGENT: Final = f"ai-cost-gateway/{__version__}"
_USER_AGENT_LINE: Final = f"User-Agent: {USER_AGENT}\r\n"
IDLE_S: Final = 30.0  # a keep-alive connection unused this long is closed (aiohttp's default)
HIGH_WATER: Final = 64 * 1024  # a stream's unread bytes past which reading pauses (aiohttp's)


class Timeouts:
    """The limits of one call, as absolute loop times where they are deadlines."""

    __slots__ = ("connect", "deadline", "read")

    def __init__(self, connect: float, read: float, deadline: float) -> None:
        self.connect = connect
        self.read = read
        self.deadline = deadline


class Connection(asyncio.Protocol):
    """One keep-alive connection: it feeds bytes to the parser and wakes the one waiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self.timeouts: Timeouts | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.streaming = False  # the body is taken as it arrives (`iter_any`), not whole
        self.paused = False  # reading paused: a stream's reader is behind

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.timeouts is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed(data)
        except Http1Error as exc:
            self._fail(exc)
            return
        parser = self.parser
        if parser.done:
            self._stop_timer()
        elif self.streaming and parser.buffered > HIGH_WATER and not self.paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.paused = True
        if parser.head_done:
            self._wake()

    def eof_received(self) -> bool:
        if self.timeouts is not None and not self.parser.done:
            self.parser.feed_eof()  # completes a body framed by the close
            if self.parser.done:
                self._stop_timer()
                self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser.keep_alive = False
        if self.timeouts is not None and not self.parser.done:
            early = not self.parser.received
            why = "before answering" if early else "in the middle of its answer"
            self._fail(Http1Closed(f"the upstream closed the connection {why}", early),
                       close=False)

    def start(self, request: bytes, timeouts: Timeouts) -> None:
        """Send one request (the connection is free); the answer comes to `wait`."""
        assert self.transport is not None
        self.parser.reset()
        self.error = None
        self.streaming = False
        self.timeouts = timeouts
        self.last_read = self.loop.time()
        self._arm()
        self.transport.write(request)

    async def wait(self, body: bool) -> None:
        """Until the head (or with `body`, the whole answer) is parsed; its failure raised."""
        parser = self.parser
        await self._until(lambda: parser.done if body else parser.head_done)
        if self.error is not None:
            raise self.error

    async def more(self) -> None:
        """Until more of the body is parsed or it is complete; its failure raised once every
        byte that arrived before it has been taken."""
        parser = self.parser
        await self._until(lambda: parser.done or parser.buffered > 0)
        if self.error is not None and not parser.buffered:
            raise self.error

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Woken by each arrival (`_wake`) until `ready()` or a failure."""
        while self.error is None and not ready():
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def resume(self) -> None:
        """A paused stream's reader caught up: read again."""
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def finished(self) -> None:
        """The call is over (its answer read, or abandoned): stop its timer."""
        self.timeouts = None
        self._stop_timer()
        self.resume()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    @property
    def reusable(self) -> bool:
        return not self.closed and self.parser.done and self.parser.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        t = self.timeouts
        assert t is not None
        self.timer = self.loop.call_at(min(t.deadline, self.last_read + t.read), self._expire)

    def _expire(self) -> None:
        """Timer: the total deadline or a read stall has passed, or re-arm for the later one."""
        self.timer = None
        t = self.timeouts
        if t is None:
            return
        now = self.loop.time()
        if self.paused:  # not a stall: the stream's reader is the one behind
            self.last_read = now
        if now < t.deadline and now < self.last_read + t.read:
            self._arm()
            return
        self._fail(TimeoutError("the upstream did not answer in time"))

    def _fail(self, exc: BaseException, close: bool = True) -> None:
        if self.error is None:
            self.error = exc
        self.parser.keep_alive = False
        if close:
            self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Http1Response:
    """An answer whose head has arrived: `status`, `headers`, then `read()` the body, or
    `iter_any()` it as it arrives.

    `release()` hands the connection back to its pool once the body is read (else closes
    it); `close()` always closes it. One of the two must be called, as with aiohttp.
    """

    __slots__ = ("_conn", "_pool", "_released", "headers", "status")

    def __init__(self, conn: Connection, pool: Pool) -> None:
        parser = conn.parser
        self.status = parser.status
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(parser.headers))
        self._conn = conn
        self._pool = pool
        self._released = False

    async def read(self) -> bytes:
        conn = self._conn
        if not conn.parser.done:
            await conn.wait(body=True)
        return conn.parser.body()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive; after the last, the connection goes back to
        its pool. A failure mid-body is raised once the bytes before it are out."""
        conn = self._conn
        parser = conn.parser
        conn.streaming = True
        while True:
            data = parser.take()
            if data:
                conn.resume()
                yield data
            elif parser.done:
                self.release()
                return
            else:
                await conn.more()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.put(self._conn)

    def close(self) -> None:
        if not self._released:
            self._conn.close()
            self.release()

    def __del__(self) -> None:  # dropped unreleased (a cancelled caller): free the slot
        if not self._released:
            with contextlib.suppress(Exception):  # a loop already closed: nothing to free
                self.close()


class Pool:
    """Keep-alive connections to one origin; a slot of `slots` held by each one in use."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None,
                 slots: asyncio.Semaphore) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.idle: collections.deque[Connection] = collections.deque()
        self.slots = slots  # shared by the upstream's pools: its limit counts them all
        self.sweeper: asyncio.TimerHandle | None = None

    async def request(self, raw: bytes, timeouts: Timeouts) -> Http1Response:
        """Send `raw` and answer the response once its head arrives."""
        if self.slots.locked():  # every connection busy: wait for one, within the total
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a slot that was
            # granted just as the time ran out, and the pool would shrink for good.
            async with asyncio.timeout_at(timeouts.deadline):
                await self.slots.acquire()
        else:
            await self.slots.acquire()
        try:
            conn = self._idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, raw, timeouts)
                except Http1Closed as exc:
                    if not exc.early:
                        raise
                    # The server closed the idle connection as we reused it: once more, fresh.
            return await self._exchange(await self._connect(timeouts), raw, timeouts)
        except BaseException:
            self.slots.release()
            raise

    async def _exchange(self, conn: Connection, raw: bytes, timeouts: Timeouts
                        ) -> Http1Response:
        conn.start(raw, timeouts)
        try:
            await conn.wait(body=False)
        except BaseException:
            conn.finished()
            conn.close()
            raise
        return Http1Response(conn, self)

    async def _connect(self, timeouts: Timeouts) -> Connection:
        remaining = timeouts.deadline - self.loop.time()
        try:
            async with asyncio.timeout(min(timeouts.connect, remaining)):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self.loop), self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None)
        except TimeoutError:  # an OSError too, but the call's timeout: the gateway's 504
            raise
        except OSError as exc:  # refused, unreachable, DNS, certificate
            raise Http1ConnectError(exc) from exc
        return conn

    def _idle(self) -> Connection | None:
        """The most recently used idle connection still open (likeliest to stay so)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None \
                    and not conn.transport.is_closing():
                return conn
        return None

    def put(self, conn: Connection) -> None:
        """A call is over: keep its connection for the next one if it can serve again."""
        conn.finished()
        self.slots.release()
        if not conn.reusable:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_at(conn.idle_since + IDLE_S, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for `IDLE_S`; come back for the next to expire."""
        self.sweeper = None
        expired = self.loop.time() - IDLE_S
        idle = self.idle
        while idle and (idle[0].idle_since <= expired or idle[0].closed):
            idle.popleft().close()
        if idle:
            self.sweeper = self.loop.call_at(idle[0].idle_since + IDLE_S, self._sweep)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        while self.idle:
            self.idle.pop().close()


class Origin:
    """What a URL's request needs that does not change call to call: its pool key and the
    start of its request (request line and Host header)."""

    __slots__ = ("head", "key")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the lean HTTP/1.1 client cannot call {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        self.key = (parts.scheme, parts.hostname, port)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        if port != (443 if tls else 80):
            host = f"{host}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.head = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"


class Http1Client:
    """Pools per origin for one upstream; `post` is the one call."""

    def __init__(self, limit: int, connect_s: float, read_s: float, total_s: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.connect_s = connect_s
        self.read_s = read_s
        self.total_s = total_s
        self._tls = tls
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._origins: dict[str, Origin] = {}

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Http1Response:
        """POST `body` to `url`; the response once its head arrives (read its body next)."""
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origin(url)
        pool = self._pools.get(origin.key)
        if pool is None:
            pool = self._pool(origin.key)
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if not any(name.lower() == "user-agent" for name in headers):
            lines += _USER_AGENT_LINE  # some API fronts refuse a request without one
        if "\n" in lines.replace("\r\n", ""):
            raise ValueError("a header value holds a line break")
        raw = b"".join((f"{origin.head}Content-Length: {len(body)}\r\n{lines}\r\n".encode(),
                        body))
        now = pool.loop.time()
        return await pool.request(raw, Timeouts(self.connect_s, self.read_s, now + self.total_s))

    def _origin(self, url: str) -> Origin:
        if len(self._origins) >= 1024:  # credentials' base URLs are few; bound it anyway
            self._origins.clear()
        origin = self._origins[url] = Origin(url)
        return origin

    def _pool(self, key: tuple[str, str, int]) -> Pool:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            if self._tls is None:  # loading the CA store costs milliseconds: once, when needed
                self._tls = ssl.create_default_context()
            tls = self._tls
        pool = self._pools[key] = Pool(host, port, tls, self.slots)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
