"""Request ids and error rendering: the only place errors become HTTP responses."""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import istr

from gateway.db import CONNECTION_ERRORS
from gateway.entries import error_shape
from gateway.errors import GatewayError, ServiceUnavailable
from gateway.http.faces import not_found_message
from gateway.http.faces.envelope import face_error_shape
from gateway.keys import RATE_HEADERS, REQUEST_ID, REQUEST_ID_TEXT, SETTINGS
from gateway.logging import REQUEST_ID_VAR

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = istr("X-AI-Cost-Gateway-Request-Id")  # as the header multidict keeps it
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
DATABASE_RETRY_AFTER_S = "2"


def error_body(path: str, request_id: str, status: int, code: str, message: str,
               openai_type: str, details: dict[str, Any]) -> bytes:
    """An error in the shape its path answers in: a seed face's (`faces.envelope`), else
    its entry's (`entries.error_shape`)."""
    shape = face_error_shape(path) or error_shape(path)
    return shape.body(request_id, status, code, message, openai_type, details)


def request_ids() -> Iterator[uuid.UUID]:
    """Unique ids without a random-number syscall per request: a random 64-bit prefix for
    this process, then a counter. They are the usage ledger's primary key."""
    return (request_id for request_id, _ in request_ids_and_texts())


def request_ids_and_texts() -> Iterator[tuple[uuid.UUID, str]]:
    """`request_ids`, each with its text (str(uuid)) made from the prefix's text and the
    counter's hex: the uuid module's own formatting costs several times more. Each UUID is
    made as `UUID.__init__` ends up making it (its two slots set), without the argument
    checks that cost as much again."""
    prefix = secrets.randbits(64)
    head = f"{prefix:016x}"
    head = f"{head[:8]}-{head[8:12]}-{head[12:]}-"
    high = prefix << 64
    new, set_slot, unknown = object.__new__, object.__setattr__, uuid.SafeUUID.unknown
    for n in itertools.count(1):
        request_id = new(uuid.UUID)
        set_slot(request_id, "int", high | n)
        set_slot(request_id, "is_safe", unknown)
        # %-formatting: a third cheaper than the same f-string here.
        yield request_id, "%s%04x-%012x" % (head, n >> 48, n & 0xFFFF_FFFF_FFFF)  # noqa: UP031


def error_middleware_factory() -> Middleware:
    ids = request_ids_and_texts()

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id, text = next(ids)
        request[REQUEST_ID] = request_id
        request[REQUEST_ID_TEXT] = text
        request[RATE_HEADERS] = None  # an admitted API call's (`quota.admit`)
        # aiohttp runs each request in its own task, so this never leaks into another one.
        REQUEST_ID_VAR.set(text)
        try:
            response = await _handle(request, handler)
        except web.HTTPException as exc:  # a redirect (an error is rendered by _handle)
            add_headers(request, exc.headers)
            raise
        if not response.prepared:  # a streamed answer has them from its handler already
            add_headers(request, response.headers)
        return response

    return error_middleware


def add_headers(request: web.Request, headers: MutableMapping[str, str]) -> None:
    """Every answer carries its request id, and an admitted API call its rate-limit headers.

    Set here (and by the one handler that streams, `proxy._relay`) rather than from an
    `on_response_prepare` signal, whose dispatch cost about 7 us a proxied call under load."""
    headers[REQUEST_ID_HEADER] = request[REQUEST_ID_TEXT]
    rate = request[RATE_HEADERS]
    if rate:
        for name, value in rate.items():
            headers.setdefault(name, value)


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return _render_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.text or exc.reason
        if exc.status == 404:
            message = not_found_message(request.path) or (
                f"no route for {request.method} {request.path}" + _supported(request))
        elif exc.status == 413:
            limit = request.app[SETTINGS].server.max_body_bytes
            message = f"request body is too large; the limit is {limit} bytes"
        kind = "not_found_error" if exc.status == 404 else (
            "invalid_request_error" if exc.status < 500 else "api_error")
        return _render(request, exc.status, code, message, kind, {}, {})
    except CONNECTION_ERRORS as exc:
        if isinstance(exc, aiohttp.ClientError):  # the client's connection (or a bug upstream)
            return _internal_error(request)
        return _database_unavailable(request, exc)
    except Exception:
        return _internal_error(request)


def _database_unavailable(request: web.Request, exc: BaseException) -> web.Response:
    """The one place PostgreSQL being unreachable, refusing connections or not answering in
    time becomes a quick 503 (its own text stays in the log). The upstream (`forward`) and
    the other lower layers translate their errors first, so what is left here is the
    database's."""
    log.warning("database_unavailable", path=request.path, error=f"{type(exc).__name__}: "
                f"{exc}".strip(": "))
    return _render_error(request, ServiceUnavailable(
        "the database is unavailable; retry shortly", code="database_unavailable",
        headers={"Retry-After": DATABASE_RETRY_AFTER_S}))


def _render_error(request: web.Request, exc: GatewayError) -> web.Response:
    if exc.status >= 500:
        log.warning("request_failed", status=exc.status, code=exc.code, error=exc.message)
    return _render(request, exc.status, exc.code, exc.message, exc.openai_type, exc.details,
                   exc.headers)


def _internal_error(request: web.Request) -> web.Response:
    log.exception("unhandled_error", path=request.path)
    return _render(request, 500, "internal_error", "internal gateway error", "api_error",
                   {}, {})


def _supported(request: web.Request) -> str:
    """Under `/v1/`, the endpoints that are served there (nothing else is forwarded)."""
    if not request.path.startswith("/v1/"):
        return ""
    served = sorted({(route.resource.canonical, route.method)
                     for route in request.app.router.routes()
                     if route.resource is not None and route.method != "HEAD"
                     and route.resource.canonical.startswith("/v1/")})
    return "; the supported endpoints are " + ", ".join(f"{m} {p}" for p, m in served)


def _render(request: web.Request, status: int, code: str, message: str, openai_type: str,
            details: dict[str, Any], headers: dict[str, str]) -> web.Response:
    body = error_body(request.path, request[REQUEST_ID_TEXT], status, code, message,
                      openai_type, details)
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)
