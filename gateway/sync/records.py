"""The providers' reports in one shape: usage and cost rows per UTC day, and what an
integration (one admin key of one provider organisation) is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

TOKEN_TYPES = ("input", "cache_read", "cache_write", "output")  # input: uncached input
GATEWAY_ACCOUNT = "gateway"


def project_account(project_id: int) -> str:
    return f"project:{project_id}"


def account_project(account: str) -> int | None:
    """The project whose own admin key an account is read with; None for the gateway's."""
    return None if account == GATEWAY_ACCOUNT else int(account.split(":", 1)[1])


@dataclass(frozen=True, slots=True)
class Integration:
    """One admin key: the provider, whose organisation it reads, where the API is."""

    provider: str  # openai | anthropic
    account: str  # GATEWAY_ACCOUNT or project_account(id)
    api_key: str = field(repr=False)
    base_url: str


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One (day, source, model, provider project) of a usage report; input is uncached."""

    day: date
    source: str
    model: str = ""
    provider_project: str = ""
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    requests: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[date, str, str, str]:
        return (self.day, self.source, self.model, self.provider_project)


@dataclass(frozen=True, slots=True)
class CostRow:
    """One (day, line item, provider project) of a cost report, in USD."""

    day: date
    line_item: str
    amount_usd: Decimal
    provider_project: str = ""
    model: str = ""
    token_type: str = ""  # one of TOKEN_TYPES, or "" for costs that are not tokens

    def key(self) -> tuple[date, str, str]:
        return (self.day, self.line_item, self.provider_project)


def merge_usage(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """Rows sharing a key summed (a report may split what the stored key does not)."""
    out: dict[tuple[date, str, str, str], UsageRow] = {}
    for row in rows:
        seen = out.get(row.key())
        if seen is None:
            out[row.key()] = row
            continue
        requests = (None if seen.requests is None and row.requests is None
                    else (seen.requests or 0) + (row.requests or 0))
        details = dict(seen.details)
        for k, v in row.details.items():
            details[k] = details.get(k, 0) + v if isinstance(v, int | float) else v
        out[row.key()] = replace(
            seen, input_tokens=seen.input_tokens + row.input_tokens,
            cache_read_tokens=seen.cache_read_tokens + row.cache_read_tokens,
            cache_write_5m_tokens=seen.cache_write_5m_tokens + row.cache_write_5m_tokens,
            cache_write_1h_tokens=seen.cache_write_1h_tokens + row.cache_write_1h_tokens,
            output_tokens=seen.output_tokens + row.output_tokens, requests=requests,
            details=details)
    return sorted(out.values(), key=UsageRow.key)


def merge_costs(rows: Iterable[CostRow]) -> list[CostRow]:
    out: dict[tuple[date, str, str], CostRow] = {}
    for row in rows:
        seen = out.get(row.key())
        out[row.key()] = row if seen is None else replace(
            seen, amount_usd=seen.amount_usd + row.amount_usd)
    return sorted(out.values(), key=CostRow.key)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def days(start: date, end: date) -> list[date]:
    """Every day from start to end, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def bucket_day(value: int | str) -> date:
    """A bucket's start (unix seconds, or RFC 3339) as its UTC day."""
    if isinstance(value, int):
        return datetime.fromtimestamp(value, UTC).date()
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).date()
