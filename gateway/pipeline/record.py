"""Stage 10, record: one usage row per request of a known project, queued to the ledger."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from gateway.domain import UsageRecord
from gateway.ledger import Ledger
from gateway.pipeline.exchange import Exchange


def record(exchange: Exchange, ledger: Ledger) -> UsageRecord | None:
    principal = exchange.principal
    if principal is None:
        return None  # unauthenticated: nothing to charge, only the log line
    chat, quote = exchange.chat, exchange.quote
    elapsed_ms = (time.perf_counter() - exchange.started) * 1000
    upstream_ms = exchange.upstream_s * 1000
    row = UsageRecord(
        request_id=exchange.request_id, project_id=principal.project.id,
        api_key_id=principal.key_id,
        provider=chat.provider if chat else "", model=chat.model if chat else "",
        endpoint=exchange.endpoint, status=exchange.status,
        streamed=chat.stream if chat else False, usage=exchange.usage,
        cost_usd=exchange.cost,
        priced_by_fallback=quote.fallback if quote else False,
        price_model=quote.price.model if quote else None,
        overhead_ms=round(max(elapsed_ms - upstream_ms, 0.0), 3),
        upstream_ms=round(upstream_ms, 3) if exchange.upstream_s else None,
        error_code=exchange.error_code,
        metadata=exchange.metadata, started_at=exchange.started_at,
        finished_at=datetime.now(UTC),
        requested_model=exchange.requested_model, credential=exchange.credential,
        attempts=exchange.attempts, route_reason=exchange.route_reason)
    ledger.record(row)
    return row
