"""Stage 7, forward: send the call upstream; the one place client errors become ours.

Calls go through the upstream's lean HTTP/1.1 client (`providers/http1.py`), which costs a
fraction of aiohttp's CPU; a stream's body is read as it arrives (`Http1Response.iter_any`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from gateway.errors import BadGateway, UpstreamTimeout
from gateway.providers.base import Upstream, UpstreamCall
from gateway.providers.http1 import Http1ConnectError, Http1Error, Http1Response


@contextmanager
def upstream_errors(upstream: Upstream) -> Iterator[None]:
    """Translate client-side failures talking to `upstream` into 502 / 504."""
    name = upstream.name
    try:
        yield
    except TimeoutError:  # aiohttp's ServerTimeoutError is one too
        s = upstream.settings
        raise UpstreamTimeout(
            f"{name} upstream did not answer in time", details={
                "provider": name, "connect_timeout_s": s.connect_timeout_s,
                "first_byte_timeout_s": s.first_byte_timeout_s,
                "total_timeout_s": s.total_timeout_s}) from None
    except (aiohttp.ClientConnectorError, Http1ConnectError) as exc:
        raise BadGateway(f"{name} upstream is unreachable: {exc.os_error}",
                         code="upstream_unreachable", details={"provider": name}) from None
    except (aiohttp.ClientError, Http1Error) as exc:
        raise BadGateway(f"{name} upstream connection failed: {exc!r}",
                         code="upstream_connection_error", details={"provider": name}) from None


async def send(upstream: Upstream, call: UpstreamCall) -> Http1Response:
    """Post the call; answer the response once its headers arrive, if its status is a success.

    An error status is read and raised as the adapter maps it. Timeouts come from the
    upstream's settings: connect, read inactivity (the first byte, and every stall of a
    stream) and total.
    """
    with upstream_errors(upstream):
        response = await upstream.http1.post(call.url, call.headers, call.body)
        if response.status < 300:
            return response
        try:
            body = await response.read()
        finally:
            response.release()
    if response.status < 400:
        raise BadGateway(f"{upstream.name} upstream answered an unexpected {response.status}",
                         code="upstream_bad_status", details={"provider": upstream.name})
    raise upstream.adapter.map_error(response.status, body, dict(response.headers))


async def read_body(upstream: Upstream, response: Http1Response) -> bytes:
    with upstream_errors(upstream):
        try:
            return await response.read()
        finally:
            response.release()
