"""The provider seam: an adapter translates, an `Upstream` owns the HTTP session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from gateway.domain import ChatRequest, Usage
from gateway.errors import UpstreamStatusError
from gateway.settings import ProviderSettings


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    url: str
    headers: dict[str, str]
    body: bytes


class ProviderAdapter(Protocol):
    """How to talk to one provider; pure functions of bytes and dataclasses, no I/O."""

    name: str

    def build_call(self, chat: ChatRequest) -> UpstreamCall:
        """The upstream request for a validated chat request (400 if it cannot be made)."""
        ...

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        """Usage and served model of a complete response; ValueError if unparseable."""
        ...

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        """Usage carried by one parsed stream event, if any."""
        ...

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        """An upstream error answer as the gateway's own error."""
        ...


class Upstream:
    """One provider endpoint: its adapter, settings and one keep-alive `ClientSession`."""

    def __init__(self, adapter: ProviderAdapter, settings: ProviderSettings) -> None:
        self.adapter = adapter
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        # Read inactivity bounds the wait for the first byte and any stall mid-stream.
        self.read_timeout = aiohttp.ClientTimeout(
            total=settings.total_timeout_s, sock_connect=settings.connect_timeout_s,
            sock_read=settings.first_byte_timeout_s)

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() was not awaited"
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections, keepalive_timeout=30, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.read_timeout,
                                              raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
