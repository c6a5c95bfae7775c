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
from typing import Protocol

import aiohttp
import structlog

from gateway.domain import ChatRequest, Project
from gateway.entries.base import Limits
from gateway.entries.openai_chat import DONE
from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    ServiceUnavailable,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.keystore import KeyStore
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.pipeline import translate, validate
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.authorize import authorize
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forward import read_body, send, upstream_errors
from gateway.pipeline.meter import (
    StreamMeter,
    completion_from_body,
    completion_texts,
    fill_missing_usage,
    usage_from_body,
)
from gateway.pipeline.price import price
from gateway.pipeline.record import record
from gateway.pricing import PriceTable, format_usd
from gateway.providers.base import Credential, Upstream, untranslatable
from gateway.providers.resilience import (
    CircuitBreaker,
    backoff_delay,
    retry_after_s,
    weighted_order,
)
from gateway.routing import Route, Router
from gateway.settings import ProviderSettings
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
        self._rng = rng or random.Random()
        self._sleep = sleep

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
        ex.chain = self._chain(ex.principal.project, chat, pinned)
        for guard in self.guards:
            await guard.admit(ex)
            ex.guards_admitted += 1
        return chat

    def _chain(self, project: Project, chat: ChatRequest, pinned: str | None) -> list[Route]:
        """Route the request (400 / 403 when its first route cannot take it) and keep the
        fallbacks that could."""
        routes = self.router.chain(chat.model, pinned)
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
        wire = self.upstreams[route.provider].adapter.wire
        if chat.untranslatable and wire != chat.entry_wire:
            raise untranslatable(list(chat.untranslatable), route.provider,
                                 f"it speaks {wire}'s API, the request is {chat.entry_wire}'s")

    @staticmethod
    def _retarget(chat: ChatRequest, route: Route) -> ChatRequest:
        """The request as sent to another route of the chain."""
        model = route.upstream_model
        return dataclasses.replace(chat, provider=route.provider, model=model,
                                   body={**chat.body, "model": model})

    async def _open(self, ex: Exchange, chat: ChatRequest
                    ) -> tuple[ChatRequest, Upstream, aiohttp.ClientResponse]:
        """Reach the first route that answers: retries with backoff per credential, the
        credentials by weight, the breaker per provider, then the fallbacks in order."""
        assert ex.principal is not None
        failures: list[GatewayError] = []
        for n, route in enumerate(ex.chain or [self.router.route(chat.model, chat.provider)]):
            target = chat if n == 0 else self._retarget(chat, route)
            upstream = self.upstreams[route.provider]
            breaker = self.breakers[route.provider]
            try:
                credentials = await self._credentials(ex.principal.project.id, upstream)
            except GatewayError as exc:  # the project's stored key cannot be read (503)
                if n == 0:
                    raise
                failures.append(exc)
                continue
            for credential in credentials:
                try:
                    call = upstream.adapter.build_call(target, credential)
                except BadRequest as exc:
                    if n == 0 and not failures:
                        raise  # the request as the client sent it cannot be made
                    failures.append(exc)
                    self._note(ex, route, credential, exc, 0.0)
                    break
                settings = upstream.settings
                for retry in range(settings.max_retries + 1):
                    if not breaker.allow():
                        skipped = ServiceUnavailable(
                            f"{route.provider} is failing; its circuit breaker is open",
                            code="circuit_open", details={"provider": route.provider})
                        failures.append(skipped)
                        self._note(ex, route, credential, skipped, 0.0)
                        break
                    started = time.perf_counter()
                    ex.forwarded = True
                    try:
                        response = await send(upstream, call)
                    except (UpstreamStatusError, BadGateway, UpstreamTimeout) as exc:
                        elapsed = time.perf_counter() - started
                        ex.upstream_s += elapsed
                        self._note(ex, route, credential, exc, elapsed)
                        failures.append(exc)
                        if not _provider_failure(exc):
                            breaker.success()  # it answered: the request was at fault
                            if _credential_failure(exc):
                                break  # this key is refused: the next credential
                            if n == 0:
                                raise  # the client's own request was refused: say so as is
                            break  # a fallback refused it (a model it lacks): the next one
                        breaker.failure()
                        wait = self._retry_wait(exc, retry, settings)
                        if wait is None:
                            break
                        await self._sleep(wait)
                        continue
                    except BaseException:
                        breaker.release()
                        raise
                    breaker.success()
                    ex.upstream_s += time.perf_counter() - started
                    self._note(ex, route, credential, None, time.perf_counter() - started)
                    ex.credential = credential.name
                    ex.chat, ex.requested_model = target, chat.model
                    return target, upstream, response
                if failures and isinstance(failures[-1], ServiceUnavailable):
                    break  # the breaker opened: no other credential of this provider either
        raise _final_error(failures)

    def _retry_wait(self, exc: GatewayError, retry: int,
                    settings: ProviderSettings) -> float | None:
        """Seconds to wait before retrying, or None to move on (retries spent, a timeout,
        or a Retry-After longer than the provider allows)."""
        if retry >= settings.max_retries or isinstance(exc, UpstreamTimeout):
            return None
        backoff = backoff_delay(retry, settings.retry_backoff_s, settings.retry_backoff_max_s,
                                self._rng)
        asked = retry_after_s(next((v for k, v in exc.headers.items()
                                    if k.lower() == "retry-after"), None))
        if asked is None:
            return backoff
        if asked > settings.retry_after_max_s:
            return None
        return max(asked, backoff)

    @staticmethod
    def _note(ex: Exchange, route: Route, credential: Credential, exc: GatewayError | None,
              elapsed: float) -> None:
        ex.attempts.append({
            "provider": route.provider, "model": route.upstream_model,
            "credential": credential.name,
            "status": 200 if exc is None else exc.status,
            "error_code": None if exc is None else exc.code,
            "ms": round(elapsed * 1000, 3)})

    async def _credentials(self, project_id: int, upstream: Upstream) -> list[Credential]:
        """The project's own credentials for this provider if it stored any, else the
        gateway's; in a random order drawn by weight."""
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
        return weighted_order(found, lambda c: c.weight, self._rng)

    async def complete(self, ex: Exchange, chat: ChatRequest) -> bytes:
        """A non-streamed call: the upstream body, relayed byte for byte on the same wire,
        else translated to the client's shape."""
        chat, upstream, response = await self._open(ex, chat)
        started = time.perf_counter()
        try:
            body = await read_body(upstream, response)
        finally:
            ex.upstream_s += time.perf_counter() - started
        adapter = upstream.adapter
        ex.usage, ex.upstream_model = usage_from_body(adapter, body)
        same_wire = adapter.wire == chat.entry_wire
        completion = None if same_wire and ex.usage.source == "provider" else (
            translate.stamp(completion_from_body(adapter, body, chat), chat.model))
        if ex.usage.source != "provider":  # an upstream that reports no usage: count it
            assert completion is not None
            output = [text for _, text in completion_texts(completion.get("choices"),
                                                           "message")]
            ex.usage = await fill_missing_usage(chat, ex.usage, output, self.tokens)
        price(ex, self.prices)
        if same_wire:
            return body
        assert completion is not None
        return ex.entry.render(chat, completion, ex.usage)

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
        row = record(ex, self.ledger)
        if self.metrics is not None and row is not None:
            self.metrics.observe(row)
        if self.log_requests and row is not None:  # never the key, never the prompt
            log.info("request", status=row.status, project_id=row.project_id,
                     provider=row.provider, model=row.model, streamed=row.streamed,
                     input_tokens=row.usage.input_tokens, output_tokens=row.usage.output_tokens,
                     cost_usd=format_usd(row.cost_usd), overhead_ms=row.overhead_ms,
                     upstream_ms=row.upstream_ms, error_code=row.error_code)


def _provider_failure(exc: GatewayError) -> bool:
    """Connect errors, timeouts, 429 and 5xx: the provider's trouble, worth another try."""
    if isinstance(exc, UpstreamStatusError):
        return exc.status == 429 or exc.status >= 500
    return True


def _credential_failure(exc: GatewayError) -> bool:
    """The provider refused this key (401 / 403): another credential may be accepted."""
    return isinstance(exc, UpstreamStatusError) and exc.status in (401, 403)


def _final_error(failures: list[GatewayError]) -> GatewayError:
    """One attempt: its own error. Several that failed alike (all unreachable, all 429, all
    timed out): the last, saying how many. Otherwise 502 naming them all."""
    if not failures:
        return ServiceUnavailable("no credential is configured for this provider",
                                  code="missing_provider_credential")
    last = failures[-1]
    if len(failures) == 1:
        return last
    summary = [{"status": f.status, "code": f.code, "message": f.message} for f in failures]
    if len({(type(f), f.status, f.code) for f in failures}) == 1:
        last.message = f"{last.message} (after {len(failures)} attempts)"
        last.details = {**last.details, "attempts": summary}
        return last
    return BadGateway(f"all {len(failures)} upstream attempts failed; the last: {last.message}",
                      code="all_upstreams_failed", details={"attempts": summary})
