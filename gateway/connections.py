"""Client connections: read deadlines, a cap on open connections, JSON for malformed requests.

aiohttp's per-connection protocol (`RequestHandler`) holds a client as long as it likes while
its headers or body trickle in, accepts connections without limit, and answers a malformed
request in plain text. `Connection` adds, with timer handles and no extra task per request:

- a header deadline (`server.header_timeout_s`) from the connection's start, or from the
  first byte of a later request, to its last header line: then 408 and closed;
- a body deadline (`server.body_timeout_s`) from the headers to the body's last byte: a read
  of the body then raises `RequestTimeout`, which the error middleware answers 408, and the
  connection closes after that answer;
- a cap (`server.max_connections`): at the cap, the oldest idle connection (no request in
  progress) is closed to make room; with none idle the new one is answered 503 and closed;
- the gateway's JSON error shape (`middlewares.error_body`) for requests aiohttp cannot
  parse: 414 for a request line over the limit, 431 for headers over it, 400 otherwise.

Idle keep-alive connections keep aiohttp's `keepalive_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Awaitable, Callable
from functools import partial, update_wrapper
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import hdrs, web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import MatchedSubAppResource, UrlMappingMatchInfo
from yarl import URL

from gateway.errors import RequestTimeout
from gateway.keys import REQUEST_ID, SETTINGS
from gateway.middlewares import REQUEST_ID_HEADER, error_body, request_ids
from gateway.settings import ServerSettings

log = structlog.get_logger(__name__)

CAPACITY_LOG_INTERVAL_S = 10.0
CUT_FINISH_S = 0.5  # a request cut at shutdown settles its guards and queues its row
FD_HEADROOM = 1024  # files besides client connections: database, upstreams, logs


def fit_fd_limit(max_connections: int) -> None:
    """Raise this process's open-file limit (soft, up to hard) to hold the connection cap: past
    it `accept()` fails and new clients wait in the backlog instead of being answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_HEADROOM
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    if soft < wanted:
        log.warning("open_file_limit_below_max_connections", open_files=soft,
                    max_connections=max_connections, headroom=FD_HEADROOM)


def make_runner(app: web.Application, **kwargs: Any) -> ConnectionRunner:
    """The runner `gateway serve` uses (tests build theirs with it too)."""
    server = app[SETTINGS].server
    options: dict[str, Any] = {"access_log": None, "handler_cancellation": True,
                               "shutdown_timeout": server.shutdown_timeout_s, **kwargs}
    return ConnectionRunner(app, server, **options)


class ConnectionRunner(web.AppRunner):
    __slots__ = ("_settings",)

    def __init__(self, app: web.Application, settings: ServerSettings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the application started and frozen
        return ConnectionServer(server, self._settings, await direct_handler(self.app))

    def limit_shutdown(self, seconds: float) -> None:
        """How long requests in flight may still run once `cleanup()` begins."""
        self._shutdown_timeout = seconds


# What aiohttp's server calls with each request (the application's requests are `Request`s).
ServerHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def direct_handler(app: web.Application) -> ServerHandler | None:
    """`app`'s request handler, with a shortcut past its router for fixed paths.

    For every request, aiohttp's `Application._handle` resolves the route (a match-info object
    made afresh), reads the event loop (a `getpid` system call in Python 3.11), checks for
    `Expect`, finds the middleware chain in a cache, and wraps the chain in one more middleware
    of its own that sets `match_info.current_app`: about 27,000 instructions a call, 3 % of a
    proxied one (bench/README.md, stop 27). A route of fixed path (`PlainResource`) resolves to
    the same route every time, so here it is resolved once, by the router itself, at start: its
    frozen match info is shared by its requests, and its handler is wrapped in the application's
    middlewares once. A request of such a method and path then goes straight to that chain, as
    aiohttp would have sent it (`current_app` is the application itself, so its setter has
    nothing to change). Anything else, and any request with `Expect` (aiohttp answers `100
    Continue` first), takes `Application._handle`. None (aiohttp's handler alone) for an
    application with old-style middlewares or a sub-application matched by domain (which the
    router asks before any path)."""
    resources = list(app.router.resources())
    middlewares = list(app.middlewares)
    if (any(isinstance(r, MatchedSubAppResource) for r in resources)
            or any(getattr(m, "__middleware_version__", None) != 1 for m in middlewares)):
        return None
    direct: dict[tuple[str, str], tuple[UrlMappingMatchInfo, Handler]] = {}
    for plain in resources:
        if not isinstance(plain, web.PlainResource):
            continue
        path = URL.build(path=plain.canonical, encoded=True).path_safe
        for route in plain:
            key = (route.method, path)
            if route.method == hdrs.METH_ANY or key in direct:
                continue
            found = await app.router.resolve(cast(web.Request, _Target(route.method, path)))
            if found.route is not route or found.http_exception is not None:
                continue  # another resource takes this method and path first
            found.add_app(app)
            found.freeze()
            chain = route.handler
            for m in reversed(middlewares):
                chain = update_wrapper(partial(m, handler=chain), chain)
            direct[key] = (found, chain)
    if not direct:
        return None
    handle = app._handle

    async def handler(request: web.Request) -> web.StreamResponse:
        found = direct.get((request.method, request.rel_url.path_safe))
        if found is None or hdrs.EXPECT in request.headers:
            return await handle(request)
        request._match_info, chain = found
        return await chain(request)

    return cast(ServerHandler, handler)


class _Target:
    """What the router reads of a request to resolve it: its method and URL."""

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.rel_url = URL.build(path=path, encoded=True)


class ConnectionServer(web.Server):
    """aiohttp's server with `Connection` as its protocol, and the connections it holds."""

    def __init__(self, base: web.Server, settings: ServerSettings,
                 request_handler: ServerHandler | None = None) -> None:
        super().__init__(request_handler or base.request_handler,
                         request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop,
                         **base._kwargs)
        self.settings = settings
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.open: dict[Connection, None] = {}  # insertion order: oldest first
        self.idle: dict[Connection, None] = {}  # no request in progress: closed first
        self.ids = request_ids()
        self.evicted = 0
        self.refused = 0
        self._capacity_logged = -CAPACITY_LOG_INTERVAL_S

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, **self._kwargs)

    def make_room(self) -> bool:
        """Under the cap, or made so by closing the oldest idle connection."""
        if len(self.open) < self.settings.max_connections:
            return True
        now = self._loop.time()
        if now - self._capacity_logged >= CAPACITY_LOG_INTERVAL_S:
            self._capacity_logged = now
            log.warning("connections_at_capacity", limit=self.settings.max_connections,
                        evicted=self.evicted, refused=self.refused)
        while self.idle:
            oldest = next(iter(self.idle))
            self.forget(oldest)
            if oldest.transport is not None:
                oldest.force_close()
                self.evicted += 1
                return True
        self.refused += 1
        return False

    def forget(self, conn: Connection) -> None:
        self.open.pop(conn, None)
        self.idle.pop(conn, None)

    def raw_error(self, path: str, status: int, code: str, message: str,
                  extra_headers: str = "") -> bytes:
        """A whole `Connection: close` response, for when there is no request to answer."""
        request_id = str(next(self.ids))
        body = error_body(path, request_id, status, code, message, "invalid_request_error"
                          if status < 500 else "api_error", {})
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n{REQUEST_ID_HEADER}: {request_id}\r\n{extra_headers}\r\n")
        return head.encode() + body


class Connection(RequestHandler):
    """One client connection: `RequestHandler` with read deadlines and JSON parse errors.

    Both deadlines share one timer per connection, moved only when a deadline comes sooner
    than it (aiohttp's keep-alive timer works the same way): a request costs two clock reads,
    not a timer of its own."""

    __slots__ = ("_bad_line", "_bad_path", "_body_deadline", "_head", "_header_deadline",
                 "_line_done", "_line_len", "_payload", "_server", "_timer", "_timer_at")

    def __init__(self, server: ConnectionServer, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._server = server
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._header_deadline = 0.0  # 0: no headers are due
        self._body_deadline = 0.0  # for `_payload` until its end or its answer (0: none)
        self._head: bytes | None = None  # first bytes of the request whose headers are due
        self._line_len = 0  # its request line's length so far
        self._line_done = False  # that line has ended
        self._payload: StreamReader | None = None  # body of the last request parsed
        self._bad_path = ""  # of a request that failed to parse ("": unknown)
        self._bad_line = False  # it failed in its request line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if not server.make_room():
            self._manager = None  # connection_lost: nothing to undo
            cast(asyncio.Transport, transport).write(server.raw_error(
                "", 503, "too_many_connections",
                f"the gateway holds its limit of {server.settings.max_connections} "
                "connections; retry shortly", "Retry-After: 1\r\n"))
            transport.close()
            return
        super().connection_made(transport)
        server.open[self] = None
        server.idle[self] = None
        self._header_deadline = self._loop.time() + server.header_timeout_s
        self._wake_at(self._header_deadline)

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
        """Wait up to `timeout` for the request in progress, then cut it at once: cancelled
        while the client is still connected, so it records itself as cut by the gateway
        (`gateway_shutdown`), given a moment to queue its usage row, then closed. aiohttp's
        own shutdown waits a second `timeout` after the cancel; the drain's deadline cannot."""
        self._force_close = True
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        if self._request_in_progress:
            self._handler_waiter = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._handler_waiter
            self._handler_waiter = None
        task = self._task_handler
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CUT_FINISH_S)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._close or self._force_close or self._upgraded or self._payload_parser:
            super().data_received(data)
            return
        if self._head is None:
            if data and (self._payload is None or self._payload.is_eof()):
                self._head = data  # a new request begins
                self._line_len = 0
                self._measure_line(data)
                self._server.idle.pop(self, None)
                if not self._header_deadline:
                    self._header_deadline = self._loop.time() + self._server.header_timeout_s
                    self._wake_at(self._header_deadline)
        elif not self._line_done:
            self._measure_line(data)
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._parsed()

    def _measure_line(self, data: bytes) -> None:
        end = data.find(b"\n")
        self._line_len += len(data) if end < 0 else end
        self._line_done = end >= 0

    def _parsed(self) -> None:
        """Headers complete: their deadline is met; the body's starts if one follows."""
        self._header_deadline = 0.0
        message, payload = self._messages[-1]
        if not isinstance(message, RawRequestMessage):  # aiohttp's parse error
            self._bad_line = self._line_len > self.max_line_size
            self._bad_path = "" if self._bad_line else _target(self._head)
        self._head = None
        self._payload = payload
        if not payload.is_eof():
            self._body_deadline = self._loop.time() + self._server.body_timeout_s
            self._wake_at(self._body_deadline)

    def _wake_at(self, deadline: float) -> None:
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first, and moves itself on to this deadline
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._force_close or self.transport is None:
            return
        now = self._loop.time()
        if self._header_deadline:
            if now >= self._header_deadline:
                self._header_timeout()
                return
            self._wake_at(self._header_deadline)
        payload = self._payload
        if payload is not None and self._body_deadline and not payload.is_eof():
            if now >= self._body_deadline:
                self._body_timeout(payload)
            else:
                self._wake_at(self._body_deadline)

    def _header_timeout(self) -> None:
        self._header_deadline = 0.0
        if self._request_in_progress or self._messages:
            self.close()  # an earlier request is still answered; none after it
            return
        if self._head is not None and self.transport is not None:
            self.transport.write(self._server.raw_error(
                _target(self._head), 408, "request_timeout",
                f"request headers did not arrive within {self._server.header_timeout_s:g} s"))
        self.force_close()

    def _body_timeout(self, payload: StreamReader) -> None:
        self.close()  # the rest of this body must not be read as the next request
        payload.set_exception(RequestTimeout(
            f"request body did not arrive within {self._server.body_timeout_s:g} s",
            headers={"Connection": "close"}))
        payload.feed_eof()  # nothing more is read for it (no lingering)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if request.content is self._payload:
            # answered: what is left of its body aiohttp reads for `lingering_time`, or closes
            self._body_deadline = 0.0
        if (self._head is None and not self._messages and not self._close
                and self.transport is not None):
            self._server.idle[self] = None  # waits for its next request
        return answered

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; cannot send an error")
        path = request.path
        if isinstance(exc, HttpProcessingError):
            status, code, text = self._parse_error(exc)
            path = self._bad_path
            log.info("bad_http_request", status=status, error=exc.message[:200])
        elif status == 504:
            code, text = "timeout", "the request timed out"
        else:
            log.error("unhandled_error", path=path, exc_info=exc)
            code, text = "internal_error", "internal gateway error"
        request_id = str(request.get(REQUEST_ID) or next(self._server.ids))
        body = error_body(path, request_id, status, code, text,
                          "invalid_request_error" if status < 500 else "api_error", {})
        resp = web.Response(status=status, body=body, content_type="application/json",
                            headers={REQUEST_ID_HEADER: request_id, "Connection": "close"})
        resp.force_close()
        return resp

    def _parse_error(self, exc: HttpProcessingError) -> tuple[int, str, str]:
        if isinstance(exc, LineTooLong) and self._bad_line:
            return (414, "uri_too_long",
                    f"the request line is longer than {self.max_line_size} bytes")
        if isinstance(exc, LineTooLong):
            return (431, "headers_too_large",
                    f"a request header is longer than {self.max_field_size} bytes")
        if "too many headers" in exc.message.lower():
            return (431, "headers_too_large",
                    f"the request has more than {self.max_headers} headers")
        return 400, "bad_request", f"malformed HTTP request: {exc.message[:200]}"


def _target(head: bytes | None) -> str:
    """The path in a request line (`POST /v1/chat/completions HTTP/1.1`), or ""."""
    if head is None or b"\n" not in head:
        return ""
    parts = head.split(b"\n", 1)[0].split(b" ")
    if len(parts) != 3:
        return ""
    return parts[1].split(b"?", 1)[0].decode("latin-1")
