"""`Exchange`: what one proxied request has learned so far, stage by stage."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.domain import NO_USAGE, ChatRequest, Principal, Usage
from gateway.pricing import Quote

if TYPE_CHECKING:
    from gateway.entries.base import Entry
    from gateway.pipeline.meter import StreamMeter
    from gateway.pipeline.translate import EventStream
    from gateway.routing import Route

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"


@dataclass(slots=True)
class Exchange:
    request_id: uuid.UUID
    endpoint: str
    entry: Entry  # the request shape the client sent
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    principal: Principal | None = None
    chat: ChatRequest | None = None
    status: int = 200
    error_code: str | None = None
    usage: Usage = NO_USAGE
    quote: Quote | None = None
    upstream_model: str | None = None
    upstream_s: float = 0.0  # time spent waiting on the upstream
    metadata: dict[str, Any] = field(default_factory=dict)
    guards_admitted: int = 0
    client_request_id: str | None = None  # X-Request-Id, the idempotency key
    input_tokens: int | None = None  # the request's input tokens, once counted
    input_ceiling: int | None = None  # a bound on them that needs no tokenizing, once made
    response_headers: dict[str, str] = field(default_factory=dict)  # from the guards
    forwarded: bool = False  # the call reached the upstream
    rate_windows: tuple[tuple[str, Any], ...] = ()  # token windows reserved: (key, window)
    reservation: Any = None  # the budget reservation, settled in finish
    stream_meter: StreamMeter | EventStream | None = None
    chain: list[Route] = field(default_factory=list)  # the routed model, then its fallbacks
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every upstream attempt
    credential: str | None = None  # label of the credential that served
    requested_model: str | None = None  # the client's model name
    route_reason: str | None = None  # why the smart router picked the model that served
    target: tuple[str, str] | None = None  # (provider, credential) in flight (load balancing)
    finished: bool = False  # guards settled and the row recorded (once, see runner.finish)

    def fail(self, status: int, code: str) -> None:
        self.status, self.error_code = status, code

    @property
    def cost(self) -> Decimal:
        return self.quote.cost if self.quote is not None else Decimal(0)
