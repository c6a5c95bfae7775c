"""`ProxyPipeline` runs the stages of DESIGN.md in order for one request.

    admit:     authenticate -> validate -> authorize -> guards (idempotency, rate limit, budget)
    complete / stream:  forward -> meter -> price
    finish:    settle the guards -> record          (always, from the handler's `finally`)

Guards are the slot for the admission stages that hold something for the duration of a call
(an idempotency claim, rate-limit tokens, a budget reservation): each is admitted in order
and settled in reverse, in `finish`, whatever happened in between.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import orjson
import structlog

from gateway.domain import ChatRequest
from gateway.errors import BadRequest
from gateway.keystore import KeyStore
from gateway.ledger import Ledger
from gateway.pipeline import validate
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.authorize import authorize
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forward import read_body, send, upstream_errors
from gateway.pipeline.meter import (
    DONE,
    StreamMeter,
    completion_texts,
    fill_missing_usage,
    usage_from_body,
)
from gateway.pipeline.price import price
from gateway.pipeline.record import record
from gateway.pricing import PriceTable, format_usd
from gateway.providers.base import Upstream
from gateway.routing import Router
from gateway.tokens.service import TokenService

METADATA_HEADER = "X-AI-Cost-Gateway-Metadata"

log = structlog.get_logger(__name__)


class Guard(Protocol):
    """An admission stage that reserves something before forwarding and settles it after."""

    async def admit(self, exchange: Exchange) -> None: ...

    async def settle(self, exchange: Exchange) -> None: ...


class ProxyPipeline:
    def __init__(self, *, keys: KeyStore, limits: validate.Limits,
                 upstreams: Mapping[str, Upstream], prices: PriceTable, ledger: Ledger,
                 tokens: TokenService, guards: Sequence[Guard] = (),
                 log_requests: bool = False) -> None:
        self.router = Router(prices)
        self.keys = keys
        self.limits = limits
        self.upstreams = upstreams
        self.providers = frozenset(upstreams)
        self.prices = prices
        self.ledger = ledger
        self.tokens = tokens
        self.guards = tuple(guards)
        self.log_requests = log_requests

    async def admit(self, ex: Exchange, headers: Mapping[str, str],
                    read: Callable[[], Awaitable[bytes]], entry: str) -> ChatRequest:
        ex.principal = await authenticate(self.keys, headers)
        ex.client_request_id = validate.client_request_id(headers.get("X-Request-Id"))
        body = validate.parse_json_object(await read(), self.limits.max_body_bytes)
        if entry == "native":
            chat = validate.validate_native(body, self.limits, self.providers)
        else:
            chat = self._routed(validate.validate_openai(body, self.limits))
        ex.chat = chat
        extra = validate.parse_metadata_header(headers.get(METADATA_HEADER))
        ex.metadata = {**chat.metadata, **extra} if extra else chat.metadata
        authorize(ex.principal.project, chat)
        for guard in self.guards:
            await guard.admit(ex)
            ex.guards_admitted += 1
        return chat

    def _routed(self, chat: ChatRequest) -> ChatRequest:
        """Send the request to the provider that serves its model (400 if not configured)."""
        route = self.router.route(chat.model)
        if route.provider not in self.upstreams:
            raise BadRequest(
                f"model {chat.model!r} is served by provider {route.provider!r}, which is not "
                f"configured on this gateway; configured: {', '.join(sorted(self.upstreams))}",
                code="provider_not_configured",
                details={"model": chat.model, "provider": route.provider})
        chat.provider = route.provider
        if route.upstream_model != chat.model:
            chat.body = {**chat.body, "model": route.upstream_model}
        return chat

    async def complete(self, ex: Exchange, chat: ChatRequest) -> bytes:
        """A non-streamed call: the upstream body, relayed byte for byte."""
        upstream = self.upstreams[chat.provider]
        call = upstream.adapter.build_call(chat)
        started = time.perf_counter()
        ex.forwarded = True
        try:
            body = await read_body(upstream, await send(upstream, call))
        finally:
            ex.upstream_s = time.perf_counter() - started
        ex.usage, ex.upstream_model = usage_from_body(upstream.adapter, body)
        if ex.usage.source != "provider":  # an upstream that reports no usage: count it
            choices = orjson.loads(body).get("choices")
            output = [text for _, text in completion_texts(choices, "message")]
            ex.usage = await fill_missing_usage(chat, ex.usage, output, self.tokens)
        price(ex, self.prices)
        return body

    async def stream(self, ex: Exchange, chat: ChatRequest) -> AsyncIterator[bytes]:
        """A streamed call: SSE bytes as they arrive, then the cost line and `[DONE]`.

        The first chunk is yielded only once the first event is known to be valid, so the
        caller can still answer a clean 502 before any byte is sent.
        """
        upstream = self.upstreams[chat.provider]
        call = upstream.adapter.build_call(chat)
        meter = ex.stream_meter = StreamMeter(upstream.adapter,
                                              keep_usage_event=chat.include_usage)
        started = time.perf_counter()
        ex.forwarded = True
        response = await send(upstream, call)
        try:
            with upstream_errors(upstream):
                async for chunk in response.content.iter_any():
                    out = meter.feed(chunk)
                    if out:
                        yield out
            ex.usage, ex.upstream_model = meter.usage, meter.model
            if ex.usage.source != "provider":
                ex.usage = await fill_missing_usage(chat, ex.usage, meter.output_texts(),
                                                    self.tokens)
            price(ex, self.prices)
            cost = f": x-ai-cost-gateway-cost {format_usd(ex.cost)}\n\n".encode()
            yield meter.flush() + cost + (DONE if meter.done else b"")
        finally:
            ex.upstream_s = time.perf_counter() - started
            ex.upstream_model = meter.model
            if ex.quote is None:  # cut short: what the upstream reported so far (finish counts)
                ex.usage = meter.usage
            response.close()  # cancels the upstream call if the stream did not finish

    async def finish(self, ex: Exchange) -> None:
        """Settle every guard, price what was used, and queue the usage row. Never raises."""
        meter = ex.stream_meter
        if ex.quote is None and ex.chat is not None and meter is not None and meter.started:
            try:  # a stream cut short: meter the tokens that were sent
                ex.usage = await fill_missing_usage(ex.chat, ex.usage, meter.output_texts(),
                                                    self.tokens)
            except Exception:
                log.exception("stream_metering_failed")
        if ex.quote is None and ex.chat is not None:
            price(ex, self.prices)
        for guard in reversed(self.guards[:ex.guards_admitted]):
            try:
                await guard.settle(ex)
            except Exception:  # one guard failing must not keep the others or the row
                log.exception("guard_settle_failed", guard=type(guard).__name__)
        row = record(ex, self.ledger)
        if self.log_requests and row is not None:  # never the key, never the prompt
            log.info("request", status=row.status, project_id=row.project_id,
                     provider=row.provider, model=row.model, streamed=row.streamed,
                     input_tokens=row.usage.input_tokens, output_tokens=row.usage.output_tokens,
                     cost_usd=format_usd(row.cost_usd), overhead_ms=row.overhead_ms,
                     upstream_ms=row.upstream_ms, error_code=row.error_code)
