"""`ProxyPipeline` runs the stages of DESIGN.md in order for one request.

    admit:     authenticate -> validate -> authorize -> guards (idempotency, rate limit, budget)
    complete / stream:  forward -> meter -> price
    finish:    settle the guards -> record          (always, from the handler's `finally`)

Guards are the slot for the admission stages that hold something for the duration of a call
(an idempotency claim, rate-limit tokens, a budget reservation): each is admitted in order
and settled in reverse, in `finish`, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any, Protocol

import structlog

from gateway.catalogue import Catalogue
from gateway.domain import ChatRequest, Project, UsageRecord
from gateway.entries.base import Entry, Limits, OwnEndpoint
from gateway.entries.openai_chat import DONE
from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.keystore import KeyStore
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.observed import Observations, provider_failure
from gateway.pipeline import translate, validate
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.authorize import authorize, enabled
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forward import read_body, send, upstream_errors
from gateway.pipeline.meter import (
    StreamMeter,
    completion_from_body,
    completion_texts,
    fill_missing_usage,
    usage_from_body,
)
from gateway.pipeline.model_access import ModelAccess, check_translatable
from gateway.pipeline.price import price
from gateway.pipeline.record import record
from gateway.pipeline.smart_route import route_request
from gateway.pricing import PriceTable, format_usd
from gateway.providers.balancer import Balancer
from gateway.providers.base import Credential, Upstream
from gateway.providers.http1 import Http1Response
from gateway.providers.resilience import OPEN, CircuitBreaker, Leg, Plan
from gateway.routing import Route, Router
from gateway.settings import RoutingSettings
from gateway.smart_router import SmartRouter
from gateway.tokens.service import TokenService

METADATA_HEADER = "X-AI-Cost-Gateway-Metadata"

log = structlog.get_logger(__name__)


class Guard(Protocol):
    """An admission stage that reserves something before forwarding and settles it after."""

    async def admit(self, exchange: Exchange) -> None: ...

    async def settle(self, exchange: Exchange) -> None: ...


class CredentialSource(Protocol):
    """Per-project provider credentials (stored encrypted); empty: use the gateway's own."""

    async def get(self, project_id: int, provider: str) -> tuple[Credential, ...]: ...


class ProxyPipeline:
    def __init__(self, *, keys: KeyStore, limits: Limits,
                 upstreams: Mapping[str, Upstream], prices: PriceTable, ledger: Ledger,
                 tokens: TokenService, router: Router, guards: Sequence[Guard] = (),
                 credentials: CredentialSource | None = None, log_requests: bool = False,
                 metrics: Metrics | None = None,
                 catalogue: Catalogue | None = None, observed: Observations | None = None,
                 routing: RoutingSettings | None = None,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.router = router
        self.keys = keys
        self.limits = limits
        self.upstreams = upstreams
        self.providers = frozenset(upstreams)
        self.prices = prices
        self.ledger = ledger
        self.tokens = tokens
        self.guards = tuple(guards)
        self.credentials = credentials
        self.log_requests = log_requests
        self.metrics = metrics
        self.breakers = {name: CircuitBreaker(u.settings.breaker_failures,
                                              u.settings.breaker_cooldown_s)
                         for name, u in upstreams.items()}
        self._views: dict[tuple[str, str, str | None], Upstream] = {}
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.routing = routing or RoutingSettings()
        self.observed = observed or Observations(self.routing.observe_window_s)
        self.smart = None if catalogue is None else SmartRouter(
            catalogue, prices, self.observed, self.routing, self.provider_open)
        self.access = ModelAccess(router, upstreams,
                                  None if credentials is None else credentials.get)
        self.balancer = Balancer(self.routing, {n: u.settings for n, u in upstreams.items()},
                                 rng=self._rng)

    def provider_open(self, provider: str) -> bool:
        """Whether the provider's circuit breaker is open (calls skip it for now)."""
        breaker = self.breakers.get(provider)
        return breaker is not None and breaker.state == OPEN

    async def admit(self, ex: Exchange, headers: Mapping[str, str],
                    read: Callable[[], Awaitable[bytes]]) -> ChatRequest:
        ex.principal = await authenticate(self.keys, headers)
        self.ledger.check_capacity()  # 503 while the usage ledger cannot keep up
        ex.client_request_id = validate.client_request_id(headers.get("X-Request-Id"))
        body = validate.parse_json_object(await read(), self.limits.max_body_bytes)
        chat = ex.entry.parse(body, self.limits, self.providers)
        pinned = chat.provider if ex.entry.pins_provider else None
        ex.chat = chat
        extra = validate.parse_metadata_header(headers.get(METADATA_HEADER))
        ex.metadata = {**chat.metadata, **extra} if extra else chat.metadata
        alternatives: list[str] = []
        if self.smart is not None and self.smart.handles(chat.model):
            enabled(ex.principal.project)
            alternatives = await route_request(
                ex, chat, self.smart, self.tokens,
                partial(self.access.refusal, ex.principal.project, chat, pinned),
                self.routing.default_output_tokens, self.routing.router_fallbacks)
        ex.chain = self._chain(ex.principal.project, chat, pinned, alternatives)
        for guard in self.guards:
            await guard.admit(ex)
            ex.guards_admitted += 1
        return chat

    async def admit_call(self, ex: Exchange, headers: Mapping[str, str]) -> None:
        """Admit a call with no model and nothing to generate (a stored response read or
        deleted): key, idempotency and the request rate limits; no budget to reserve."""
        ex.principal = await authenticate(self.keys, headers)
        self.ledger.check_capacity()
        ex.client_request_id = validate.client_request_id(headers.get("X-Request-Id"))
        ex.metadata = validate.parse_metadata_header(headers.get(METADATA_HEADER))
        for guard in self.guards:
            await guard.admit(ex)
            ex.guards_admitted += 1

    def _chain(self, project: Project, chat: ChatRequest, pinned: str | None,
               alternatives: Sequence[str] = ()) -> list[Route]:
        """Route the request (400 / 403 when its first route cannot take it) and keep the
        fallbacks that could (the smart router's `alternatives` last)."""
        routes = self.router.chain(chat.model, pinned)
        routes += [r for r in map(self.router.route, alternatives) if r not in routes]
        first = routes[0]
        if first.provider not in self.upstreams:
            raise BadRequest(
                f"model {chat.model!r} is served by provider {first.provider!r}, which is not "
                f"configured on this gateway; configured: {', '.join(sorted(self.upstreams))}",
                code="provider_not_configured",
                details={"model": chat.model, "provider": first.provider})
        chat.provider = first.provider
        if first.upstream_model != chat.body.get("model"):
            chat.body = {**chat.body, "model": first.upstream_model}
        authorize(project, chat)
        self._check_translatable(chat, first)
        usable = [first]
        for route in routes[1:]:
            try:
                if route.provider not in self.upstreams:
                    continue
                authorize(project, self._retarget(chat, route))
                self._check_translatable(chat, route)
            except (BadRequest, Forbidden):
                continue  # a fallback this request or project cannot use is left out
            usable.append(route)
        return usable

    def _check_translatable(self, chat: ChatRequest, route: Route) -> None:
        check_translatable(self.upstreams, chat, route)

    @staticmethod
    def _retarget(chat: ChatRequest, route: Route) -> ChatRequest:
        """The request as sent to another route of the chain."""
        model = route.upstream_model
        return dataclasses.replace(chat, provider=route.provider, model=model,
                                   body={**chat.body, "model": model})

    async def _open(self, ex: Exchange, chat: ChatRequest
                    ) -> tuple[ChatRequest, Upstream, Http1Response]:
        """Reach the first route that answers, attempt by attempt as the resilience plan
        orders them (routes, credentials by weight, retries, breakers)."""
        assert ex.principal is not None
        routes = ex.chain or [self.router.route(chat.model, chat.provider)]
        legs = [Leg(chat if n == 0 else self._retarget(chat, route),
                    self._upstream(ex.entry, route.provider, chat.entry_wire),
                    route.upstream_model)
                for n, route in enumerate(routes)]
        plan = Plan(legs, self.breakers, partial(self._credentials, ex.principal.project.id),
                    ex.attempts, rng=self._rng, sleep=self._sleep)
        async with aclosing(plan.attempts()) as attempts:
            async for attempt in attempts:
                target = (attempt.leg.upstream.name, attempt.credential.name)
                started = time.perf_counter()
                ex.forwarded = True
                self.balancer.started(*target)
                try:
                    response = await send(attempt.leg.upstream, attempt.call)
                except (UpstreamStatusError, BadGateway, UpstreamTimeout) as exc:
                    elapsed = time.perf_counter() - started
                    ex.upstream_s += elapsed
                    plan.failed(attempt, exc, elapsed)
                    self.balancer.ended(*target, failed=provider_failure(exc.status))
                    continue
                except BaseException:
                    plan.abandoned(attempt)
                    self.balancer.ended(*target)
                    raise
                elapsed = time.perf_counter() - started
                ex.upstream_s += elapsed
                plan.succeeded(attempt, elapsed)
                self.balancer.answered(*target, elapsed * 1000)
                ex.target = target  # in flight until finish
                ex.credential = attempt.credential.name
                ex.chat = attempt.leg.chat
                ex.requested_model = ex.requested_model or chat.model
                return attempt.leg.chat, attempt.leg.upstream, response
        raise plan.error()

    def _upstream(self, entry: Entry, provider: str, wire: str | None = None) -> Upstream:
        """The provider, at the endpoint of its API that serves this entry (speaking `wire`
        when given). Made once per entry, provider and wire: the runtime Protocol check and
        the view's copy cost more than the rest of routing."""
        key = (entry.path, provider, wire)
        view = self._views.get(key)
        if view is None:
            view = self.upstreams[provider]
            if isinstance(entry, OwnEndpoint):
                view = entry.upstream(view)
            if wire is not None:
                view = view.speaking(wire)
            self._views[key] = view
        return view

    async def _credentials(self, project_id: int, leg: Leg) -> list[Credential]:
        """The project's own credentials for this provider if it stored any, else the
        gateway's; in the order the model's balancing strategy gives (`Balancer`)."""
        upstream = leg.upstream
        own: tuple[Credential, ...] = ()
        if self.credentials is not None:
            own = await self.credentials.get(project_id, upstream.name)
        if own:
            base = upstream.settings.base_url
            found = [dataclasses.replace(c, name=f"project:{c.name}",
                                         base_url=c.base_url or base) for c in own]
        else:
            found = list(upstream.credentials)
        if len(found) < 2:
            return found
        return self.balancer.order(upstream.name, leg.model, found)

    async def complete(self, ex: Exchange, chat: ChatRequest) -> bytes:
        """A non-streamed call: the upstream body, relayed byte for byte on the same wire
        when it reports its usage, else rendered in the client's shape by the entry (which
        adds the usage as metered where the client's shape has one)."""
        chat, upstream, response = await self._open(ex, chat)
        started = time.perf_counter()
        try:
            body = await read_body(upstream, response)
        finally:
            ex.upstream_s += time.perf_counter() - started
        adapter = upstream.adapter
        ex.usage, ex.upstream_model = usage_from_body(adapter, body)
        same_wire = adapter.wire == chat.entry_wire
        completion = (None if same_wire and ex.usage.source == "provider"
                      else completion_from_body(adapter, body, chat) if same_wire
                      else translate.stamp(completion_from_body(adapter, body, chat), chat.model))
        if ex.usage.source != "provider":  # an upstream that reports no usage: count it
            assert completion is not None
            output = [text for _, text in completion_texts(completion.get("choices"),
                                                           "message")]
            ex.usage = await fill_missing_usage(chat, ex.usage, output, self.tokens)
        price(ex, self.prices)
        if completion is None:  # same wire, usage reported: the bytes as they came
            return body
        return ex.entry.render(chat, completion, ex.usage)  # with the usage as metered

    async def relay(self, ex: Exchange, chat: ChatRequest) -> bytes:
        """A free call's upstream answer as it is (`ChatRequest.free`: nothing to meter)."""
        chat, upstream, response = await self._open(ex, chat)
        started = time.perf_counter()
        try:
            return await read_body(upstream, response)
        finally:
            ex.upstream_s += time.perf_counter() - started

    async def stream(self, ex: Exchange, chat: ChatRequest) -> AsyncIterator[bytes]:
        """A streamed call: SSE as it arrives (translated where the wires differ), then the
        cost line and the end of the stream.

        The first chunk is yielded only once the first event is known to be valid, so the
        caller can still answer a clean 502 before any byte is sent.
        """
        chat, upstream, response = await self._open(ex, chat)
        adapter = upstream.adapter
        meter: StreamMeter | translate.EventStream
        if adapter.wire == "openai" and chat.entry_wire == "openai":
            meter = StreamMeter(adapter, keep_usage_event=chat.include_usage)
        else:
            meter = translate.EventStream(
                adapter, chat, ex.entry.stream_encoder(chat, str(ex.request_id)))
        ex.stream_meter = meter
        started = time.perf_counter()
        try:
            with upstream_errors(upstream):
                async for chunk in response.iter_any():
                    out = meter.feed(chunk)
                    if out:
                        yield out
            ex.usage, ex.upstream_model = meter.usage, meter.model
            if ex.usage.source != "provider":
                ex.usage = await fill_missing_usage(chat, ex.usage, meter.output_texts(),
                                                    self.tokens)
            price(ex, self.prices)
            cost = f": x-ai-cost-gateway-cost {format_usd(ex.cost)}\n\n".encode()
            last = (meter.flush() + cost + (DONE if meter.done else b"")
                    if isinstance(meter, StreamMeter) else meter.finish(cost))
            now = time.perf_counter()
            ex.upstream_s, started = ex.upstream_s + now - started, now
            ex.upstream_model = meter.model
            await self.finish(ex)  # recorded (journaled) before the client has all of it
            yield last
        finally:
            ex.upstream_s += time.perf_counter() - started
            ex.upstream_model = meter.model
            if ex.quote is None:  # cut short: what the upstream reported so far (finish counts)
                ex.usage = meter.usage
            response.close()  # cancels the upstream call if the stream did not finish

    async def finish(self, ex: Exchange) -> None:
        """Settle every guard, price what was used, and queue the usage row, once. Never
        raises."""
        if ex.finished:
            return
        ex.finished = True
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
        if ex.target is not None:
            self.balancer.ended(*ex.target)
            ex.target = None
        row = record(ex, self.ledger)  # queued (and journaled) before the answer is written
        if row is not None:
            # Counted once the answer is on its way: nothing in it depends on these, and a
            # client at one connection waits for whatever runs before its answer is written.
            # The callback runs before this process reads another request.
            asyncio.get_running_loop().call_soon(self._account, row, ex.attempts)

    def _account(self, row: UsageRecord, attempts: list[dict[str, Any]]) -> None:
        """A call's metrics, routing observations and request log line."""
        try:
            if self.metrics is not None:
                self.metrics.observe(row)
            if attempts:
                self.observed.record_attempts(attempts, row.upstream_ms)
            if self.log_requests:  # never the key, never the prompt
                log.info("request", status=row.status, project_id=row.project_id,
                         provider=row.provider, model=row.model, streamed=row.streamed,
                         input_tokens=row.usage.input_tokens,
                         output_tokens=row.usage.output_tokens,
                         cost_usd=format_usd(row.cost_usd), overhead_ms=row.overhead_ms,
                         upstream_ms=row.upstream_ms, error_code=row.error_code)
        except Exception:  # a callback's error would only reach the loop's handler
            log.exception("request_accounting_failed", request_id=str(row.request_id))

