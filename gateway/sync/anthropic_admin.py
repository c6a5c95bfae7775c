"""Anthropic's Admin API: the messages usage report (uncached input, cache writes by
duration, cache reads and output, by model and day) and the cost report (by description),
read with an admin key (`sk-ant-admin...`).

https://docs.anthropic.com/en/api/usage-cost-api. Cost amounts are decimal strings in
cents ("123.45" is $1.23).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
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

API_VERSION = "2023-06-01"
_TOKEN_TYPES = {"uncached_input_tokens": "input", "cache_read_input_tokens": "cache_read",
                "cache_creation.ephemeral_5m_input_tokens": "cache_write",
                "cache_creation.ephemeral_1h_input_tokens": "cache_write",
                "output_tokens": "output"}


def _window(start: date, end: date) -> list[tuple[str, str]]:
    def rfc3339(day: date) -> str:
        return day_start(day).isoformat().replace("+00:00", "Z")
    return [("starting_at", rfc3339(start)), ("ending_at", rfc3339(end + timedelta(days=1))),
            ("bucket_width", "1d"), ("limit", str((end - start).days + 1))]


async def fetch(session: aiohttp.ClientSession, integration: Integration, start: date,
                end: date, *, timeout_s: float) -> tuple[list[UsageRow], list[CostRow]]:
    """Usage and cost rows of the days start..end (UTC, both included)."""
    headers = {"x-api-key": integration.api_key, "anthropic-version": API_VERSION}
    base = integration.base_url.rstrip("/")
    usage: list[UsageRow] = []
    async for page in pages(session, f"{base}/v1/organizations/usage_report/messages",
                            [*_window(start, end), ("group_by[]", "model")], headers,
                            timeout_s):
        for bucket in page["data"]:
            day = bucket_day(str(bucket["starting_at"]))
            usage.extend(_usage_row(day, r) for r in bucket.get("results") or [])
    costs: list[CostRow] = []
    async for page in pages(session, f"{base}/v1/organizations/cost_report",
                            [*_window(start, end), ("group_by[]", "description")], headers,
                            timeout_s):
        for bucket in page["data"]:
            day = bucket_day(str(bucket["starting_at"]))
            costs.extend(_cost_row(day, r) for r in bucket.get("results") or [])
    return merge_usage(usage), merge_costs(costs)


def _usage_row(day: date, r: dict[str, Any]) -> UsageRow:
    creation = r.get("cache_creation") or {}
    tools = r.get("server_tool_use") or {}
    details = {f"server_tool_use.{k}": whole(v) for k, v in tools.items() if v}
    return UsageRow(day=day, source="messages", model=str(r.get("model") or ""),
                    input_tokens=whole(r.get("uncached_input_tokens")),
                    cache_read_tokens=whole(r.get("cache_read_input_tokens")),
                    cache_write_5m_tokens=whole(creation.get("ephemeral_5m_input_tokens")),
                    cache_write_1h_tokens=whole(creation.get("ephemeral_1h_input_tokens")),
                    output_tokens=whole(r.get("output_tokens")), details=details)


def _cost_row(day: date, r: dict[str, Any]) -> CostRow:
    if str(r.get("currency", "USD")).upper() != "USD":
        raise AdminApiError(f"a cost in {r.get('currency')!r}: only USD is reconciled")
    try:
        cents = Decimal(str(r.get("amount", "0")))
    except InvalidOperation:
        raise AdminApiError(f"a cost amount that is not a number: {r.get('amount')!r}") \
            from None
    token_type = _TOKEN_TYPES.get(str(r.get("token_type") or ""), "")
    description = str(r.get("description") or r.get("cost_type") or "")
    return CostRow(day=day, line_item=description, amount_usd=cents.scaleb(-2),
                   provider_project=str(r.get("workspace_id") or ""),
                   model=str(r.get("model") or "") if token_type else "",
                   token_type=token_type)
