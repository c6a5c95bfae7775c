"""The proxy handler, one per entry shape (`gateway/entries/`): admit, forward, answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import istr

from gateway.entries.base import Entry
from gateway.errors import GatewayError
from gateway.http.answer import Answer
from gateway.http.json import read_limited
from gateway.keys import PIPELINE, REQUEST_ID, SETTINGS, SHUTDOWN
from gateway.middlewares import add_headers
from gateway.pipeline.exchange import CLIENT_CLOSED, Exchange
from gateway.pricing import format_usd

COST_HEADER = istr("X-AI-Cost-Gateway-Cost")  # istr: taken as it is by the header multidict
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def handler(entry: Entry) -> Handler:
    """The handler of `POST entry.path`."""
    return partial(_proxy, entry=entry)


async def _proxy(request: web.Request, entry: Entry) -> web.StreamResponse:
    app = request.app  # a property of a property: read once
    pipeline = app[PIPELINE]
    limit = app[SETTINGS].server.max_body_bytes
    ex = Exchange(request[REQUEST_ID], request.path, entry)
    # `settled`, written out: its generator and context manager cost about 3 us a call.
    try:
        chat = await pipeline.admit(ex, request.headers, partial(read_limited, request, limit))
        if not chat.stream:
            body = await pipeline.complete(ex, chat)
            return Answer(body=body, headers={
                hdrs.CONTENT_TYPE: "application/json", **ex.response_headers,
                COST_HEADER: format_usd(ex.cost)})
        return await _relay(request, ex, pipeline.stream(ex, chat))
    except BaseException as exc:
        ended_by(request, ex, exc)
        raise
    finally:
        await pipeline.finish(ex)


@contextlib.asynccontextmanager
async def settled(request: web.Request, ex: Exchange) -> AsyncIterator[None]:
    """Around a metered call: its outcome marked whatever ends it, then its guards settled
    and its usage row queued, once."""
    try:
        yield
    except BaseException as exc:
        ended_by(request, ex, exc)
        raise
    finally:
        await request.app[PIPELINE].finish(ex)


def ended_by(request: web.Request, ex: Exchange, exc: BaseException) -> None:
    """Mark a call's outcome by what cut it short: the error's status (its answer gets the
    guards' headers), a cancelled call, or an internal error."""
    if isinstance(exc, GatewayError):
        ex.fail(exc.status, exc.code)
        exc.headers = {**ex.response_headers, **exc.headers}
    elif isinstance(exc, asyncio.CancelledError):
        cancelled(request, ex)
    elif isinstance(exc, Exception):
        ex.fail(500, "internal_error")


def cancelled(request: web.Request, ex: Exchange) -> None:
    """Who cut the call short: the gateway itself, shutting down with the client still
    connected (503 `gateway_shutdown`), or the client that went away (499)."""
    transport = request.transport
    if request.app[SHUTDOWN].started and transport is not None and not transport.is_closing():
        ex.fail(503, "gateway_shutdown")
    else:
        ex.fail(CLIENT_CLOSED, "client_closed")


async def _relay(request: web.Request, ex: Exchange,
                 chunks: AsyncIterator[bytes]) -> web.StreamResponse:
    """Write SSE chunks as they come; a failure after the first byte ends with an error event."""
    try:
        first = await anext(chunks)  # may raise: nothing is sent yet, a plain error answers
    except StopAsyncIteration:
        first = b""
    response = web.StreamResponse(headers={**_SSE_HEADERS, **ex.response_headers})
    add_headers(request, response.headers)  # prepared here, before the middleware sees it
    try:
        await response.prepare(request)
        await response.write(first)
        async for data in chunks:
            await response.write(data)
    except GatewayError as exc:
        ex.fail(exc.status, exc.code)
        await _write_quietly(response, ex.entry.error_event(exc.status, exc.code, exc.message,
                                                            exc.openai_type))
    except ConnectionResetError:  # the client went away mid-stream
        ex.fail(CLIENT_CLOSED, "client_closed")
        return response
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    await _write_quietly(response, None)
    return response


async def _write_quietly(response: web.StreamResponse, data: bytes | None) -> None:
    try:
        if data is None:
            await response.write_eof()
        else:
            await response.write(data)
    except ConnectionResetError:
        pass
