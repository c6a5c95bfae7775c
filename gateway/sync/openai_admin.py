"""OpenAI's organisation Usage API (every kind, by day, model and project) and Costs API
(by line item and project), read with an admin key (`sk-admin-...`).

https://platform.openai.com/docs/api-reference/usage,
https://platform.openai.com/docs/api-reference/usage/costs. The reference does not list
line item names; token line items are read as "<model>, input" (or "cached input",
"cache write", "output"), the form the Costs API's exports use. Any other line item (or one
in another form) is kept as a cost that is not tokens: reconciled as spend the ledger does
not have, never dropped.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import aiohttp

from gateway.sync.client import AdminApiError, pages, whole
from gateway.sync.records import (
    CostRow,
    Integration,
    UsageRow,
    bucket_day,
    day_start,
    merge_costs,
    merge_usage,
)

USAGE_KINDS = ("completions", "embeddings", "moderations", "images", "audio_speeches",
               "audio_transcriptions", "vector_stores", "code_interpreter_sessions")
_LINE_KINDS = {"input": "input", "cached input": "cache_read", "cache write": "cache_write",
               "output": "output"}
# Quantities other than tokens, kept in details.
_OTHER = ("images", "characters", "seconds", "usage_bytes", "num_sessions", "sessions",
          "input_audio_tokens", "output_audio_tokens")


def _window(start: date, end: date, limit: int) -> list[tuple[str, str]]:
    return [("start_time", str(int(day_start(start).timestamp()))),
            ("end_time", str(int(day_start(end + timedelta(days=1)).timestamp()))),
            ("bucket_width", "1d"), ("limit", str(limit))]


async def fetch(session: aiohttp.ClientSession, integration: Integration, start: date,
                end: date, *, timeout_s: float) -> tuple[list[UsageRow], list[CostRow]]:
    """Usage and cost rows of the days start..end (UTC, both included)."""
    headers = {"Authorization": f"Bearer {integration.api_key}"}
    limit = (end - start).days + 1
    base = integration.base_url.rstrip("/")
    usage: list[UsageRow] = []
    for kind in USAGE_KINDS:
        params = [*_window(start, end, limit), ("group_by", "model"),
                  ("group_by", "project_id")]
        if kind in ("vector_stores", "code_interpreter_sessions"):
            params = [*_window(start, end, limit), ("group_by", "project_id")]
        async for page in pages(session, f"{base}/organization/usage/{kind}", params, headers,
                                timeout_s):
            for bucket in page["data"]:
                day = bucket_day(int(bucket["start_time"]))
                usage.extend(_usage_row(kind, day, r) for r in bucket.get("results") or [])
    costs: list[CostRow] = []
    params = [*_window(start, end, limit), ("group_by", "line_item"), ("group_by", "project_id")]
    async for page in pages(session, f"{base}/organization/costs", params, headers, timeout_s):
        for bucket in page["data"]:
            day = bucket_day(int(bucket["start_time"]))
            costs.extend(_cost_row(day, r) for r in bucket.get("results") or [])
    return merge_usage(usage), merge_costs(costs)


def _usage_row(kind: str, day: date, r: dict[str, Any]) -> UsageRow:
    details = {k: whole(r[k]) for k in _OTHER if r.get(k)}
    tokens = kind in ("completions", "embeddings", "moderations")
    total_input = whole(r.get("input_tokens")) if tokens else 0
    cached = whole(r.get("input_cached_tokens")) if tokens else 0
    requests = r.get("num_model_requests")
    return UsageRow(day=day, source=kind, model=str(r.get("model") or ""),
                    provider_project=str(r.get("project_id") or ""),
                    input_tokens=max(total_input - cached, 0), cache_read_tokens=cached,
                    output_tokens=whole(r.get("output_tokens")) if tokens else 0,
                    requests=None if requests is None else whole(requests), details=details)


def _cost_row(day: date, r: dict[str, Any]) -> CostRow:
    amount = r.get("amount") or {}
    currency = str(amount.get("currency", "usd")).lower()
    if currency != "usd":
        raise AdminApiError(f"a cost in {currency!r}: only USD is reconciled")
    value = amount.get("value", 0)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise AdminApiError(f"a cost amount that is not a number: {value!r}")
    line_item = str(r.get("line_item") or "")
    model, _, kind = line_item.rpartition(", ")
    token_type = _LINE_KINDS.get(kind.strip().lower(), "") if model else ""
    return CostRow(day=day, line_item=line_item, amount_usd=Decimal(value),
                   provider_project=str(r.get("project_id") or ""),
                   model=model.strip() if token_type else "", token_type=token_type)
