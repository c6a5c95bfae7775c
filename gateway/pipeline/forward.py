"""Stage 7, forward: send the call upstream; the one place aiohttp errors become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from gateway.errors import BadGateway, UpstreamTimeout
from gateway.providers.base import Upstream, UpstreamCall


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
    except aiohttp.ClientConnectorError as exc:
        raise BadGateway(f"{name} upstream is unreachable: {exc.os_error}",
                         code="upstream_unreachable", details={"provider": name}) from None
    except aiohttp.ClientError as exc:
        raise BadGateway(f"{name} upstream connection failed: {exc!r}",
                         code="upstream_connection_error", details={"provider": name}) from None


async def send(upstream: Upstream, call: UpstreamCall) -> aiohttp.ClientResponse:
    """Post the call; answer the response once its headers arrive, if its status is a success.

    An error status is read and raised as the adapter maps it. Timeouts come from the
    session: connect, read inactivity (the first byte) and total.
    """
    with upstream_errors(upstream):
        response = await upstream.session.post(
            call.url, data=call.body, headers=call.headers, allow_redirects=False,
            timeout=upstream.read_timeout)
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


async def read_body(upstream: Upstream, response: aiohttp.ClientResponse) -> bytes:
    with upstream_errors(upstream):
        try:
            return await response.read()
        finally:
            response.release()
