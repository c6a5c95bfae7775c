"""The provider seam: an adapter translates, an `Upstream` owns the HTTP session.

The pivot between entry shapes and providers is OpenAI's Chat Completions wire shape: every
validated request carries an OpenAI-shaped body (`ChatRequest.body`), every adapter builds its
provider's request from it and translates its provider's answers back into OpenAI completion
objects and chunk dicts. Where the entry shape and the provider speak the same wire (`wire`),
the gateway relays the provider's bytes as they are and only meters them.
"""

from __future__ import annotations

import copy
import functools
import ssl
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from gateway.domain import ChatRequest, Usage
from gateway.errors import BadRequest, UpstreamStatusError
from gateway.providers.http1 import Http1Client
from gateway.settings import BUILTIN_PROVIDERS, ProviderSettings

# The providers' own API hosts: calling one without a key can only fail.
OFFICIAL_HOSTS = frozenset(
    host for _, url, _, _ in BUILTIN_PROVIDERS.values() if (host := urlsplit(url).hostname))

WIRES = ("openai", "anthropic", "gemini", "cohere", "openai_responses")


# Not frozen, like resilience.Leg: one is made for every attempt, and a frozen dataclass's
# __init__ sets each field through object.__setattr__, about three times the cost.
@dataclass(slots=True)
class UpstreamCall:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Credential:
    """One way to reach a provider: an API key at a base URL (one of several, by weight).

    `name` labels it in usage rows and logs (never the key itself). `options` carries the
    provider's extra settings (Azure's `api_version`, a deployment map, ...).
    """

    name: str
    api_key: str = field(repr=False)
    base_url: str
    weight: int = 1
    options: Mapping[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=1024)
def url_host(url: str) -> str:
    """A URL's host, lower-cased ("" without one). Cached: a call asks it of its
    credential's URL, a few distinct ones per gateway, and `urlsplit` costs about 2 us."""
    return urlsplit(url).hostname or ""


def require_key(provider: str, credential: Credential, keyed_hosts: Collection[str],
                env: str) -> None:
    """400 at once for a provider's own API host without a key (a local or compatible
    server may need none)."""
    if not credential.api_key and url_host(credential.base_url) in keyed_hosts:
        raise BadRequest(
            f"no credential is configured for provider {provider}: set {env} or store one for "
            "the project", code="missing_provider_credential", details={"provider": provider})


def untranslatable(features: str | Sequence[str], provider: str, why: str = "") -> BadRequest:
    """The 400 for request features a provider's API has no counterpart for."""
    names = [features] if isinstance(features, str) else list(features)
    reason = f": {why}" if why else ""
    return BadRequest(
        f"{', '.join(names)} cannot be translated to provider {provider}{reason}",
        code="untranslatable_feature",
        details={"feature": names[0], "features": names, "provider": provider})


def unsupported_provider(chat: ChatRequest, provider: str, kind: str) -> BadRequest:
    """The 400 for a model whose provider does not serve the request's endpoint."""
    kinds = sorted(chat.provider_kinds)
    return BadRequest(
        f"POST /v1{chat.upstream_path} is served by {', '.join(kinds)} providers only; model "
        f"{chat.model!r}"
        f"is served by provider {provider!r} (kind {kind})", code="unsupported_provider",
        details={"endpoint": f"/v1{chat.upstream_path}", "providers": kinds, "provider": provider,
                 "model": chat.model})


def upstream_error(provider: str, status: int, message: str, kind: str, error: Any,
                   headers: dict[str, str]) -> UpstreamStatusError:
    """The gateway's error for an upstream's error answer (only Retry-After is relayed)."""
    relay = {k: v for k, v in headers.items() if k.lower() == "retry-after"}
    return UpstreamStatusError(
        status, f"{provider} upstream error {status}: {message}", openai_type=kind,
        details={"provider": provider, "upstream_status": status, "upstream_error": error},
        headers=relay)


def body_message(body: bytes, status: int) -> str:
    """An error body that is not the provider's JSON error: its start, as text."""
    return body[:500].decode("utf-8", "replace").strip() or f"upstream answered {status}"


# The fields of each OpenAI message role a translating adapter knows how to carry.
MESSAGE_KEYS = {"system": {"role", "content"}, "developer": {"role", "content"},
                "user": {"role", "content"}, "assistant": {"role", "content", "tool_calls",
                                                           "refusal"},
                "tool": {"role", "content", "tool_call_id", "name"}}


def message_role(message: dict[str, Any], where: str, provider: str) -> str:
    """A pivot message's role, once its role and fields are ones a translation can carry
    (400 naming the first that is not). Unset fields (None, or no annotations), as SDKs echo
    a previous reply's message, are not features."""
    role = message.get("role")
    known = MESSAGE_KEYS.get(role) if isinstance(role, str) else None
    if known is None:
        raise untranslatable(f"{where}.role={role}", provider)
    extra = {k for k, v in message.items() if v not in (None, [])} - known
    if extra:
        raise untranslatable(f"{where}.{sorted(extra)[0]}", provider)
    return str(role)


class StreamTranslator(Protocol):
    """A provider's SSE events, one at a time, as OpenAI `chat.completion.chunk` dicts.

    `usage` holds what the provider reported so far (`NO_USAGE` until it reports any);
    `model` the model it says served the call.
    """

    usage: Usage
    model: str | None

    def feed(self, event: str | None, data: Any) -> list[dict[str, Any]]:
        """One SSE event (`event:` name or None, parsed `data:` JSON) -> chunks to emit."""
        ...

    def close(self) -> list[dict[str, Any]]:
        """The upstream stream ended: any chunk still owed (a final finish_reason)."""
        ...


class ProviderAdapter(Protocol):
    """How to talk to one provider; pure functions of bytes and dataclasses, no I/O."""

    name: str  # the configured provider name: "openai", "azure", "deepseek", ...
    wire: str  # the wire format it speaks, one of WIRES

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        """The upstream request for a validated chat request.

        When `chat.native_body` is set and `chat.entry_wire == self.wire`, that body is sent
        as it is (pass-through); otherwise the OpenAI-shaped `chat.body` is translated.
        A feature that cannot be translated raises `BadRequest` naming it.
        """
        ...

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        """Usage and served model of a complete response on this wire; ValueError if not one."""
        ...

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        """A complete response on this wire as an OpenAI `chat.completion` object."""
        ...

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        """A fresh translator for one streamed response."""
        ...

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        """Usage carried by one parsed stream event, if any (the OpenAI-wire fast path)."""
        ...

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        """An upstream error answer as the gateway's own error."""
        ...


class Relaying(Protocol):
    """An optional ability: an adapter whose provider also serves a second wire as it is
    (OpenAI's Responses API), relayed by the adapter `relay` answers."""

    def relay(self, wire: str) -> ProviderAdapter | None: ...


def credential_usable(kind: str, credential: Credential) -> bool:
    """Whether a call with this credential can be made at all: a key, or (not for Azure) a
    server of one's own that may need none."""
    if kind == "azure":
        return bool(credential.api_key and credential.base_url)
    if credential.api_key:
        return True
    host = url_host(credential.base_url)
    return bool(host) and host not in OFFICIAL_HOSTS


class Upstream:
    """One provider: its adapter, settings, credentials and two keep-alive clients: the lean
    `Http1Client` for the proxied calls, streamed or not, and an aiohttp `ClientSession` for
    the rest (the stored-response routes).

    `tls` replaces the default SSLContext of the lean client (a test's own certificate).
    """

    def __init__(self, adapter: ProviderAdapter, settings: ProviderSettings,
                 credentials: tuple[Credential, ...] = (),
                 tls: ssl.SSLContext | None = None) -> None:
        self.adapter = adapter
        self.name = adapter.name  # read about 7 times a call: an attribute, not a property
        self.settings = settings
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._tls = tls
        self._http1: Http1Client | None = None
        # Read inactivity bounds the wait for the first byte and any stall mid-stream.
        self.read_timeout = aiohttp.ClientTimeout(
            total=settings.total_timeout_s, sock_connect=settings.connect_timeout_s,
            sock_read=settings.first_byte_timeout_s)

    def speaking(self, wire: str) -> Upstream:
        """This provider as it serves `wire`: itself, or a view (same session, credentials
        and breaker) whose adapter relays a second API of that wire, where the adapter's
        optional `relay(wire)` has one (OpenAI's Responses API)."""
        if self.adapter.wire == wire:
            return self
        # getattr, not isinstance(Relaying): a runtime Protocol check costs microseconds here.
        relay: Callable[[str], ProviderAdapter | None] | None = getattr(
            self.adapter, "relay", None)
        adapter = relay(wire) if relay is not None else None
        if adapter is None:
            return self
        view = copy.copy(self)
        view.adapter, view.name = adapter, adapter.name
        return view

    @property
    def usable(self) -> bool:
        """The gateway's own credentials can reach it (a project may still bring its own)."""
        return any(credential_usable(self.settings.kind, c) for c in self.credentials)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() was not awaited"
        return self._session

    @property
    def http1(self) -> Http1Client:
        assert self._http1 is not None, "Upstream.start() was not awaited"
        return self._http1

    async def start(self) -> None:
        s = self.settings
        # Each client holds up to max_connections: the proxied calls on the lean one.
        self._http1 = Http1Client(s.max_connections, s.connect_timeout_s,
                                  s.first_byte_timeout_s, s.total_timeout_s, self._tls)
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections, keepalive_timeout=30, ttl_dns_cache=300)
        # No cookie jar: a cookie one provider answer sets (Cloudflare's __cf_bm, say) must
        # not ride along on the next project's call, and filtering cookies costs every call.
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.read_timeout,
                                              raise_for_status=False,
                                              cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self._http1 is not None:
            self._http1.close()
            self._http1 = None
        if self._session is not None:
            await self._session.close()
            self._session = None
